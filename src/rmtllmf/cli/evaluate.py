"""``rmtllmf evaluate``: score checkpoints (experts, merges) on their tasks."""

from __future__ import annotations

import argparse
import json

import numpy as np
from rich.table import Table

from rmtllmf.cli.common import examples, rich_console, set_threads


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate",
        help="per-task and normalized accuracy of a model",
        description="Score a checkpoint (an expert, a merge) on its tasks, next to the "
        "fine-tuned experts: accuracy per task, and normalized accuracy (accuracy over the "
        "expert's) when every task has an expert. tiny-vit scores the embedded tasks (building "
        "the embedded zoo first if it is not cached: the command says so and how long); "
        "hf-clip scores zero-shot heads on --data: a dataset's --split, or every image of an "
        "image folder (the table says which).",
        epilog=examples(
            "rmtllmf evaluate --model merged.safetensors --tasks signs digits",
            "rmtllmf evaluate --family hf-clip --base openai/clip-vit-base-patch16 "
            "--model merged/ --data cars=data/cars-test --finetuned cars=ft/cars --json",
        ),
    )
    p.add_argument(
        "--family",
        default="tiny-vit",
        help="model family: a registered family with an evaluate hook (built in: tiny-vit, "
        "hf-clip)",
    )
    p.add_argument("--model", required=True, help="checkpoint to evaluate (e.g. a merge)")
    p.add_argument(
        "--tasks", nargs="+", default=None, help="tiny-vit: embedded tasks (default: all 8)"
    )
    p.add_argument(
        "--split",
        default="test",
        help="tiny-vit: val or test; hf-clip: the datasets' split (image folders: all images)",
    )
    p.add_argument(
        "--base", default=None, help="hf-clip: base model directory or id (default: ViT-B/16)"
    )
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
    p.add_argument("--online", action="store_true", help="allow hub downloads (hf-clip)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    """Score a model on its tasks (one function per family) and print a table or JSON."""
    set_threads(args.threads)
    from rmtllmf.app.family_registry import evaluate_hook

    acc, finetuned, scored = evaluate_hook(args.family)(args)
    result = _result(args, acc, finetuned, scored)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(args, acc, finetuned, result)
    return 0


def _result(
    args: argparse.Namespace,
    acc: dict[str, float],
    finetuned: dict[str, float],
    scored: dict[str, str],
) -> dict[str, object]:
    """The JSON record; normalized accuracy only when every task has a fine-tuned accuracy.
    ``split`` names what was scored: the split, or ``all images`` of an image folder (per task
    in ``scored``)."""
    from rmtllmf.metrics import normalized_accuracy

    result: dict[str, object] = {
        "model": args.model,
        "split": " / ".join(dict.fromkeys(scored.values())),
        "scored": scored,
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
    table = Table(title=f"{args.model} ({result['split']})")
    for name in ("task", "accuracy", "fine-tuned", "normalized"):
        table.add_column(name, justify="right")
    for t, a in acc.items():
        f = finetuned.get(t)
        table.add_row(
            t, f"{a:.3f}", "-" if f is None else f"{f:.3f}", "-" if f is None else f"{a / f:.3f}"
        )
    rich_console(120).print(table)
    if "normalized_accuracy" in result:
        print(
            f"mean accuracy {result['mean_accuracy']:.3f}, "
            f"normalized accuracy {result['normalized_accuracy']:.3f}"
        )
