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
from rmtllmf.errors import CheckpointError, InputError

if TYPE_CHECKING:
    from rmtllmf.data.real import LabelledImages
    from rmtllmf.models.hf_clip import HfClip

Scores = tuple[dict[str, float], dict[str, float], dict[str, str]]
"""Accuracy of the evaluated model per task, of the fine-tuned experts per task, and what was
scored per task (``test``, ``val``, or ``all images`` of an image folder)."""


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    """``TASK=VALUE`` items of ``flag`` as a dict."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise InputError(f"{flag} expects TASK=PATH items, got {item!r}")
        out[name] = value
    return out


def _named(exc: CheckpointError, flag: str, path: str) -> CheckpointError:
    """A checkpoint error of ``flag``'s file; ``evaluate`` reads no pickles (it has no
    ``--allow-pickle``), so a pickle gets the way to convert it instead."""
    if "pickle" in str(exc):
        return CheckpointError(
            f"{flag} {path} is a pickle checkpoint, which evaluate does not load (pickles can run "
            'code); convert it once: python -c "import torch, safetensors.torch as s; '
            f"s.save_file(torch.load('{path}', weights_only=True), 'model.safetensors')\""
        )
    text = str(exc)
    if "--allow-nonfinite" in text:  # merge's flag; evaluate scores finite weights only
        text = text.split(". Check or re-save", 1)[0].split("; a merge of it", 1)[0]
        return CheckpointError(
            f"{flag}: {text}; evaluate scores only finite weights: check or re-save that "
            "checkpoint (a merge writes NaN or inf only when run with --allow-nonfinite)"
        )
    return CheckpointError(f"{flag}: {text}")


def _check_against_base(model: str, base_file: Path) -> None:
    """``--model`` has the base's tensors (names and shapes): read from the headers only."""
    from rmtllmf.fusion import LazyCheckpoint

    with LazyCheckpoint(model) as ckpt, LazyCheckpoint(base_file) as base:
        names, theirs = base.keys(), ckpt.keys()
        missing = [k for k in names if k not in ckpt]
        unexpected = [k for k in theirs if k not in base]
        shapes = [k for k in names if k in ckpt and ckpt.meta(k)[0] != base.meta(k)[0]]
    if missing or unexpected or shapes:
        parts = [
            f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("lacks", missing), ("has extra", unexpected), ("reshapes", shapes))
            if keys
        ]
        raise InputError(
            f"--model {model} is not a tiny-vit checkpoint of this base: it {'; '.join(parts)}; "
            "give a fine-tune or merge of the embedded base (or --family hf-clip)"
        )


def tiny_vit_scores(args: argparse.Namespace) -> Scores:
    """Score ``--model`` and the embedded zoo's fine-tunes on ``--tasks`` (default: all); the
    zoo is the default eight-task one whatever ``--tasks`` says (each expert is fine-tuned
    anchored on the other tasks' domains, so a zoo of fewer tasks has other experts), built
    once and cached; ``--model`` is checked against the base before (the command announces a
    build)."""
    from rmtllmf.cli.common import announce_zoo, check_embedded_tasks
    from rmtllmf.fusion import load_state_dict
    from rmtllmf.pools.tiny_vit_pool import ZooConfig, build_zoo
    from rmtllmf.pools.zoo_config import base_path

    check_embedded_tasks(args.tasks)
    given = [
        flag
        for flag, value in (
            ("--base", args.base),
            ("--data", args.data),
            ("--finetuned", args.finetuned),
            ("--online", args.online),
        )
        if value
    ]
    if given:
        raise InputError(
            f"{', '.join(given)} apply only to --family hf-clip; drop them, or add --family "
            "hf-clip (tiny-vit scores the embedded tasks against the embedded zoo's experts)"
        )
    if args.split not in ("val", "test"):
        raise InputError(f"--split {args.split!r}: the embedded tasks have val and test; pick one")
    cfg = ZooConfig()  # the embedded zoo that reproduce and zoo build use; --tasks picks tasks
    tasks = tuple(args.tasks) if args.tasks else cfg.tasks
    root = default_cache() / "zoo"
    base_file = base_path(cfg, root / "base")
    try:
        if base_file.is_file():
            _check_against_base(args.model, base_file)
        state = load_state_dict(args.model)
    except CheckpointError as exc:
        raise _named(exc, "--model", args.model) from exc
    if not args.json:
        announce_zoo(root, cfg)
    zoo = build_zoo(root, cfg, progress=not args.json)
    acc = zoo.task_accuracy(state, tasks, args.split)
    finetuned = {t: zoo.finetuned_accuracy(t, args.split) for t in tasks}
    return acc, finetuned, dict.fromkeys(tasks, args.split)


def _is_folder(path: str) -> bool:
    """An image folder (``root/<class>/<images>``), not a ``save_to_disk`` dataset."""
    return Path(path).is_dir() and not (Path(path) / "dataset_dict.json").exists()


def _load_suites(
    args: argparse.Namespace, clip: HfClip, data_paths: Mapping[str, str]
) -> dict[str, LabelledImages]:
    """Each task's data: an image folder, or a dataset (hub id or ``save_to_disk`` directory)."""
    from rmtllmf.data.real import load_hf_dataset, load_image_folder

    suites = {}
    for task, path in data_paths.items():
        suites[task] = (
            load_image_folder(path, clip.image_size)
            if _is_folder(path)
            else load_hf_dataset(path, args.split, clip.image_size, offline=not args.online)
        )
    return suites


def hf_clip_scores(args: argparse.Namespace) -> Scores:
    """Score ``--model`` and the ``--finetuned`` checkpoints with zero-shot heads on ``--data``."""
    from rmtllmf.fusion import LazyCheckpoint
    from rmtllmf.models.hf_clip import BASE_IDS, HfClip, vision_state
    from rmtllmf.training.clip import clip_accuracy

    if args.tasks:
        raise InputError(
            "--tasks picks embedded tasks (--family tiny-vit); with hf-clip the tasks are the "
            "names in --data TASK=PATH: drop --tasks"
        )
    data_paths = _pairs(args.data, "--data")
    if not data_paths:
        raise InputError("--family hf-clip needs --data TASK=PATH for at least one task")
    finetuned_paths = _pairs(args.finetuned, "--finetuned")
    for flag, path in [
        ("--model", args.model),
        *(("--finetuned", p) for p in finetuned_paths.values()),
    ]:
        try:
            with LazyCheckpoint(path):  # readable, not pickled: checked before any model loads
                pass
        except CheckpointError as exc:
            raise _named(exc, flag, path) from exc
    clip = HfClip.from_pretrained(args.base or BASE_IDS["vit-b-16"], offline=not args.online)
    suites = _load_suites(args, clip, data_paths)
    heads = {t: clip.zero_shot_head(d.classnames) for t, d in suites.items()}

    def score(checkpoint: str) -> dict[str, float]:
        """Accuracy per task with ``checkpoint``'s vision tower loaded."""
        clip.load_vision_state(vision_state(checkpoint))
        return {t: clip_accuracy(clip, heads[t], d) for t, d in suites.items()}

    finetuned = {}
    for task, ckpt in finetuned_paths.items():
        finetuned[task] = score(ckpt)[task]
    scored = {t: "all images" if _is_folder(p) else args.split for t, p in data_paths.items()}
    return score(args.model), finetuned, scored
