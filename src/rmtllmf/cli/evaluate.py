"""``rmtllmf evaluate``: score checkpoints (experts, merges) on their tasks."""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from rich.console import Console
from rich.table import Table


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


def run(args: argparse.Namespace) -> int:
    """Score a model on its tasks (one function per family) and print a table or JSON."""
    import torch

    from rmtllmf.cli.evaluate_families import hf_clip_scores, tiny_vit_scores

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    scores = tiny_vit_scores if args.family == "tiny-vit" else hf_clip_scores
    acc, finetuned = scores(args)
    result = _result(args, acc, finetuned)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(args, acc, finetuned, result)
    return 0


def _result(
    args: argparse.Namespace, acc: dict[str, float], finetuned: dict[str, float]
) -> dict[str, object]:
    """The JSON record; normalized accuracy only when every task has a fine-tuned accuracy."""
    from rmtllmf.metrics import normalized_accuracy

    result: dict[str, object] = {
        "model": args.model,
        "split": args.split,
        "accuracy": acc,
        "mean_accuracy": float(np.mean(list(acc.values()))),
    }
    if finetuned and set(acc) <= set(finetuned):
        result["finetuned_accuracy"] = finetuned
        result["normalized_accuracy"] = normalized_accuracy(acc, finetuned)
    return result


def _print_table(
    args: argparse.Namespace,
    acc: dict[str, float],
    finetuned: dict[str, float],
    result: dict[str, object],
) -> None:
    """Accuracy, fine-tuned accuracy and their ratio per task, then the means if normalized."""
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
