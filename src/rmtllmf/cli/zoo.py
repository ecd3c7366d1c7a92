"""``rmtllmf zoo``: build the embedded zoo and report its experts and their clean merge."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table

from rmtllmf._malloc import keep_freed_memory
from rmtllmf.cli.common import (
    announce_zoo,
    check_embedded_tasks,
    check_output_dir,
    default_cache,
    examples,
    rich_console,
    set_threads,
)
from rmtllmf.errors import InputError

if TYPE_CHECKING:
    from rmtllmf.pools.tiny_vit_pool import TinyVitPool, ZooConfig
    from rmtllmf.study.clean_merge import MergeReport


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "zoo",
        help="build the embedded model zoo (tiny base + 8 fine-tunes)",
        description="The embedded model zoo: the shipped tiny CLIP-shaped ViT fine-tuned on the "
        "eight synthetic tasks, cached (a second build with the same settings reuses it).",
        epilog=examples("rmtllmf zoo build --workers 2", "rmtllmf zoo build --tasks signs digits"),
    )
    zsub = p.add_subparsers(dest="zoo_command", required=True, metavar="COMMAND")
    b = zsub.add_parser(
        "build",
        help="build or reuse the zoo and report the clean merge",
        description="Build (or reuse) the zoo: generate each task's data, fit the heads, "
        "fine-tune one expert per task, then merge them by task arithmetic (lambda chosen on "
        "validation) and print the accuracies. The default settings use the experts and heads "
        "the package ships (the data is generated here, under a minute); other settings, or "
        "--experts trained, fine-tune here (the default zoo about 5 minutes on 2 cores; the "
        "command says how long before it starts).",
        epilog=examples(
            "rmtllmf zoo build --workers 2",
            "rmtllmf zoo build --experts trained --workers 2",
            "rmtllmf zoo build --tasks signs digits --steps 200 --json",
        ),
    )
    b.add_argument(
        "--root",
        type=Path,
        default=None,
        help="cache directory (default: $RMTLLMF_CACHE/zoo or ~/.cache/rmtllmf/zoo)",
    )
    b.add_argument(
        "--tasks", nargs="+", default=None, help="subset of the embedded tasks (default: all 8)"
    )
    b.add_argument(
        "--steps", type=int, default=None, help="fine-tuning steps per task (default 800)"
    )
    b.add_argument(
        "--lr", type=float, default=None, help="fine-tuning learning rate (default 1e-3)"
    )
    b.add_argument("--batch", type=int, default=None, help="fine-tuning batch size (default 64)")
    b.add_argument(
        "--n-train", type=int, default=None, help="training images per task (default 20000)"
    )
    b.add_argument(
        "--anchor-weight",
        type=float,
        default=None,
        help="beta of the function-space anchor on pretext images (0: plain fine-tuning; "
        "default 10)",
    )
    b.add_argument("--base", default=None, help="tiny base checkpoint (default: the shipped one)")
    b.add_argument("--seed", type=int, default=0, help="seed of data, heads and fine-tuning")
    b.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    b.add_argument(
        "--workers",
        type=int,
        default=1,
        help="single-threaded processes that generate data and fine-tune (2 beat 1 process "
        "with 2 threads on 2 cores)",
    )
    b.add_argument(
        "--experts",
        choices=("auto", "shipped", "trained"),
        default=None,
        help="the package's experts (shipped), fine-tuned here (trained), or the package's when "
        "the settings are theirs (auto, the default)",
    )
    b.add_argument("--json", action="store_true", help="print machine-readable JSON")


FLAGS = {
    name: "--" + name.replace("_", "-")
    for name in (
        "steps",
        "lr",
        "batch",
        "n_train",
        "anchor_weight",
        "seed",
        "tasks",
        "base",
        "experts",
    )
}
"""Config field -> the flag that sets it, so errors name what the user typed."""


def run(args: argparse.Namespace) -> int:
    """Build or reuse the zoo, merge its experts cleanly, and print a table or JSON."""
    set_threads(args.threads)
    from rmtllmf.pools.tiny_vit_pool import build_zoo
    from rmtllmf.pools.zoo_config import load_base
    from rmtllmf.study.clean_merge import evaluate_clean_merge

    check_embedded_tasks(args.tasks)
    cfg = _zoo_config(args)
    if args.workers < 1:
        raise InputError(f"--workers {args.workers} is below 1; give 1 or more")
    if args.base is not None and not Path(args.base).is_file():
        raise InputError(f"--base {args.base} does not exist; give a tiny-vit .safetensors base")
    if args.base is not None:
        load_base(args.base)  # a checkpoint of another architecture fails here, before any work
    root = args.root or default_cache() / "zoo"
    check_output_dir(root, "--root")
    keep_freed_memory()
    announce_zoo(root, cfg, args.workers)
    zoo = build_zoo(root, cfg, progress=not args.json, workers=args.workers)
    summary = _summary(zoo, cfg, evaluate_clean_merge(zoo, cfg.tasks))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(cfg.tasks, summary)
    return 0


def _zoo_config(args: argparse.Namespace) -> ZooConfig:
    """The zoo config: the defaults, overridden by the flags that were given."""
    from rmtllmf.pools.tiny_vit_pool import ZooConfig

    names = ("steps", "lr", "batch", "n_train", "anchor_weight", "base", "seed", "experts")
    given: dict[str, Any] = {"tasks": tuple(args.tasks) if args.tasks else None}
    given.update((name, getattr(args, name)) for name in names)
    return ZooConfig(**{k: v for k, v in given.items() if v is not None})


def _summary(zoo: TinyVitPool, cfg: ZooConfig, report: MergeReport) -> dict[str, Any]:
    """The JSON record: the config, accuracies per task and their means, the merge and cosines."""
    base = {t: zoo.base_accuracy(t) for t in cfg.tasks}
    ft = {t: zoo.finetuned_accuracy(t) for t in cfg.tasks}
    off = report.cosine[~np.eye(len(cfg.tasks), dtype=bool)]
    return {
        "root": str(zoo.root),
        "config": cfg.model_dump(),
        "base_test": base,
        "finetuned_test": ft,
        "merged_test": report.test_accuracy,
        "mean_base": float(np.mean(list(base.values()))),
        "mean_finetuned": float(np.mean(list(ft.values()))),
        "mean_merged": float(np.mean(list(report.test_accuracy.values()))),
        "lambda": report.scaling,
        "normalized_accuracy": report.normalized,
        "gap_recovery": report.gap_recovery,
        "cosine_offdiag_mean": float(off.mean()) if off.size else float("nan"),
        "cosine_offdiag_max": float(off.max()) if off.size else float("nan"),
        "cosine": report.cosine.tolist(),
    }


def _print_summary(tasks: Sequence[str], s: dict[str, Any]) -> None:
    """The summary as a table of accuracies per task and a line on the merge."""
    table = Table(title=f"Embedded zoo ({s['root']})")
    for name in ("task", "base", "fine-tuned", "merged (TA)"):
        table.add_column(name, justify="right")
    for t in tasks:
        base, ft, merged = s["base_test"][t], s["finetuned_test"][t], s["merged_test"][t]
        table.add_row(t, f"{base:.3f}", f"{ft:.3f}", f"{merged:.3f}")
    table.add_row("mean", *(f"{s[k]:.3f}" for k in ("mean_base", "mean_finetuned", "mean_merged")))
    console = rich_console(120)
    console.print(table)
    console.print(
        f"task arithmetic, lambda={s['lambda']:.2f} (chosen on validation): normalized accuracy "
        f"{s['normalized_accuracy']:.3f}, gap recovery {s['gap_recovery']:.2f}; task-vector "
        f"cosine off-diagonal mean {s['cosine_offdiag_mean']:.3f}, max "
        f"{s['cosine_offdiag_max']:.3f}"
    )
