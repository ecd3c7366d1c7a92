"""``rmtllmf reproduce``: the paper's study in one command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rmtllmf.cli.common import default_cache
from rmtllmf.errors import InputError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "reproduce",
        help="run the whole study (zoo, sweep, figures, report) on the embedded default",
    )
    p.add_argument("--quick", action="store_true", help="a sample of subsets (minutes)")
    p.add_argument("--config", type=Path, default=None, help="YAML study config (configs/)")
    p.add_argument("--out", type=Path, default=Path("results"), help="results directory")
    p.add_argument("--cache", type=Path, default=None, help="zoo / pool cache directory")
    p.add_argument("--reset", action="store_true", help="discard an existing results database")
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many runs")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="single-threaded processes for the zoo and the sweep (default: cores for "
        "tiny-vit, 1 for hf-clip)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")


def run(args: argparse.Namespace) -> int:
    import torch

    from rmtllmf.reproduce import load_config, quick_config, reproduce

    if args.quick and args.config is not None:
        raise InputError("--quick runs the embedded default; drop --config or --quick")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    cfg = (
        load_config(args.config)
        if args.config is not None
        else quick_config()
        if args.quick
        else None
    )
    if cfg is None:
        from rmtllmf.reproduce import ReproduceConfig

        cfg = ReproduceConfig()
    workers = args.workers or ((os.cpu_count() or 1) if cfg.family == "tiny-vit" else 1)
    summary = reproduce(
        cfg,
        args.out,
        cache=args.cache or default_cache(),
        reset=args.reset,
        max_runs=args.max_runs,
        workers=workers,
    )
    console = Console(width=None if sys.stdout.isatty() else 120)
    table = Table(title=f"Normalized accuracy at N = {summary['n_tasks']} ({args.out})")
    for name in ("link", "scenario", "none", "freeze", "realign", "R-MTLLMF"):
        table.add_column(name, justify="right")
    for link, by_s in summary["by_link"].items():
        for scenario, d in by_s.items():
            table.add_row(
                link,
                scenario,
                *(
                    f"{d.get(k, float('nan')):.3f}"
                    for k in ("none", "freeze", "realign", "r-mtllmf")
                ),
            )
    console.print(table)
    console.print(
        f"clean {summary['clean']:.3f}, clean + realign {summary['clean_realign']:.3f}; "
        f"floors: base {summary['base']:.3f}, base + realign {summary['base_realign']:.3f}, "
        f"chance {summary['chance']:.3f}; report: {args.out / 'report.md'}"
    )
    return 0
