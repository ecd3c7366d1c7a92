"""``rmtllmf zoo``: build the embedded zoo and report its experts and their clean merge."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from rmtllmf._io import default_cache
from rmtllmf.cli.common import check_output_dir, examples, rich_console, set_threads

if TYPE_CHECKING:
    from rmtllmf.pools.tiny_vit_pool import ZooConfig


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
    from rmtllmf.app.tiny_vit_family import check_embedded_tasks
    from rmtllmf.app.zoo import build_zoo_summary

    check_embedded_tasks(args.tasks)
    cfg = _zoo_config(args)
    root = args.root or default_cache() / "zoo"
    check_output_dir(root, "--root")
    summary = build_zoo_summary(cfg, root, workers=args.workers, progress=not args.json)
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
