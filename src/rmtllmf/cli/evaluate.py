"""``rmtllmf evaluate``: score checkpoints (experts, merges) on their tasks."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from rmtllmf.cli.common import default_cache
from rmtllmf.errors import InputError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluate", help="per-task and normalized accuracy of a model")
    p.add_argument("--family", choices=["tiny-vit", "hf-clip"], default="tiny-vit")
    p.add_argument("--model", required=True, help="checkpoint to evaluate (e.g. a merge)")
    p.add_argument("--tasks", nargs="+", default=None, help="tiny-vit: embedded tasks")
    p.add_argument("--split", default="test")
    p.add_argument("--base", default=None, help="hf-clip: base model directory or id")
    p.add_argument(
        "--data",
        nargs="+",
        default=[],
        metavar="TASK=PATH",
        help="hf-clip: image folder or dataset per task",
    )
    p.add_argument(
        "--finetuned",
        nargs="*",
        default=[],
        metavar="TASK=CKPT",
        help="hf-clip: fine-tuned checkpoints, the normalisers",
    )
    p.add_argument("--online", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise InputError(f"{flag} expects TASK=PATH items, got {item!r}")
        out[name] = value
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from rmtllmf.fusion import load_state_dict
    from rmtllmf.metrics import normalized_accuracy

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    finetuned: dict[str, float] = {}
    if args.family == "tiny-vit":
        from rmtllmf.pools.tiny_vit import ZooConfig, build_zoo

        cfg = ZooConfig(**({"tasks": tuple(args.tasks)} if args.tasks else {}))
        zoo = build_zoo(default_cache() / "zoo", cfg, progress=not args.json)
        acc = zoo.task_accuracy(load_state_dict(args.model), cfg.tasks, args.split)
        finetuned = {t: zoo.finetuned_accuracy(t, args.split) for t in cfg.tasks}
    else:
        from rmtllmf.data.real import load_hf_dataset, load_image_folder
        from rmtllmf.models.hf_clip import BASE_IDS, HfClip, vision_state
        from rmtllmf.training.clip import clip_accuracy

        data_paths = _pairs(args.data, "--data")
        if not data_paths:
            raise InputError("--family hf-clip needs --data TASK=PATH for at least one task")
        clip = HfClip.from_pretrained(args.base or BASE_IDS["vit-b-16"], offline=not args.online)
        suites = {}
        for task, path in data_paths.items():
            suites[task] = (
                load_image_folder(path, clip.image_size)
                if Path(path).is_dir() and not (Path(path) / "dataset_dict.json").exists()
                else load_hf_dataset(path, args.split, clip.image_size, offline=not args.online)
            )
        heads = {t: clip.zero_shot_head(d.classnames) for t, d in suites.items()}

        def score(checkpoint: str) -> dict[str, float]:
            clip.load_vision_state(vision_state(checkpoint))
            return {t: clip_accuracy(clip, heads[t], d) for t, d in suites.items()}

        for task, ckpt in _pairs(args.finetuned, "--finetuned").items():
            finetuned[task] = score(ckpt)[task]
        acc = score(args.model)
    result: dict[str, object] = {
        "model": args.model,
        "split": args.split,
        "accuracy": acc,
        "mean_accuracy": float(np.mean(list(acc.values()))),
    }
    if finetuned and set(acc) <= set(finetuned):
        result["finetuned_accuracy"] = finetuned
        result["normalized_accuracy"] = normalized_accuracy(acc, finetuned)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    table = Table(title=f"{args.model} ({args.split})")
    for name in ("task", "accuracy", "fine-tuned", "normalized"):
        table.add_column(name, justify="right")
    for t, a in acc.items():
        f = finetuned.get(t)
        table.add_row(
            t, f"{a:.3f}", "-" if f is None else f"{f:.3f}", "-" if f is None else f"{a / f:.3f}"
        )
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    if "normalized_accuracy" in result:
        print(
            f"mean accuracy {result['mean_accuracy']:.3f}, "
            f"normalized accuracy {result['normalized_accuracy']:.3f}"
        )
    return 0
