"""``rmtllmf evaluate``, one scoring function per model family (tiny-vit, hf-clip).

Each returns the model's accuracy per task and the fine-tuned experts' accuracy (the
normalisers) per task; imported only when the command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rmtllmf.cli.common import default_cache
from rmtllmf.errors import InputError

if TYPE_CHECKING:
    from rmtllmf.data.real import LabelledImages
    from rmtllmf.models.hf_clip import HfClip

Scores = tuple[dict[str, float], dict[str, float]]
"""Accuracy of the evaluated model per task, and of the fine-tuned experts per task."""


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    """``TASK=VALUE`` items of ``flag`` as a dict."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise InputError(f"{flag} expects TASK=PATH items, got {item!r}")
        out[name] = value
    return out


def tiny_vit_scores(args: argparse.Namespace) -> Scores:
    """Score ``--model`` and the zoo's fine-tunes on the embedded tasks (building the zoo)."""
    from rmtllmf.fusion import load_state_dict
    from rmtllmf.pools.tiny_vit import ZooConfig, build_zoo

    cfg = ZooConfig(**({"tasks": tuple(args.tasks)} if args.tasks else {}))
    zoo = build_zoo(default_cache() / "zoo", cfg, progress=not args.json)
    acc = zoo.task_accuracy(load_state_dict(args.model), cfg.tasks, args.split)
    finetuned = {t: zoo.finetuned_accuracy(t, args.split) for t in cfg.tasks}
    return acc, finetuned


def _load_suites(
    args: argparse.Namespace, clip: HfClip, data_paths: Mapping[str, str]
) -> dict[str, LabelledImages]:
    """Each task's data: an image folder, or a dataset (hub id or ``save_to_disk`` directory)."""
    from rmtllmf.data.real import load_hf_dataset, load_image_folder

    suites = {}
    for task, path in data_paths.items():
        suites[task] = (
            load_image_folder(path, clip.image_size)
            if Path(path).is_dir() and not (Path(path) / "dataset_dict.json").exists()
            else load_hf_dataset(path, args.split, clip.image_size, offline=not args.online)
        )
    return suites


def hf_clip_scores(args: argparse.Namespace) -> Scores:
    """Score ``--model`` and the ``--finetuned`` checkpoints with zero-shot heads on ``--data``."""
    from rmtllmf.models.hf_clip import BASE_IDS, HfClip, vision_state
    from rmtllmf.training.clip import clip_accuracy

    data_paths = _pairs(args.data, "--data")
    if not data_paths:
        raise InputError("--family hf-clip needs --data TASK=PATH for at least one task")
    clip = HfClip.from_pretrained(args.base or BASE_IDS["vit-b-16"], offline=not args.online)
    suites = _load_suites(args, clip, data_paths)
    heads = {t: clip.zero_shot_head(d.classnames) for t, d in suites.items()}

    def score(checkpoint: str) -> dict[str, float]:
        """Accuracy per task with ``checkpoint``'s vision tower loaded."""
        clip.load_vision_state(vision_state(checkpoint))
        return {t: clip_accuracy(clip, heads[t], d) for t, d in suites.items()}

    finetuned = {}
    for task, ckpt in _pairs(args.finetuned, "--finetuned").items():
        finetuned[task] = score(ckpt)[task]
    return score(args.model), finetuned
