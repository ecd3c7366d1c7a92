"""``rmtllmf reproduce``: the paper's study in one command."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from rmtllmf._io import check_output_dir_owner, default_cache
from rmtllmf._malloc import keep_freed_memory
from rmtllmf._progress import minutes, notice
from rmtllmf.cli.common import (
    check_out_given,
    check_output_dir,
    examples,
    rich_console,
    set_threads,
)
from rmtllmf.errors import InputError

if TYPE_CHECKING:
    from rmtllmf.app.reproduce import ReproduceConfig


FLAGS = {"max_runs": "--max-runs"}
"""Config field -> the flag that sets it, so errors name what the user typed."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "reproduce",
        help="run the whole study (zoo, sweep, figures, report) on the embedded default",
        description="The paper's study in one command: builds (or reuses) the model pool, runs "
        "the sweep into OUT/results.db (every finished run is kept: Ctrl-C and the same command "
        "resume) and writes report.md, the figures, summary.json and runs.csv under OUT. "
        "Without --config or --quick it runs the full default grid (hours). Several machines "
        "can share one study: each runs --shard i/n into its own OUT, then --merge-shards "
        "combines their databases and writes the report over the union.",
        epilog=examples(
            "rmtllmf reproduce --quick --out results              # ~7 min on 2 cores",
            "rmtllmf reproduce --config configs/embedded-paper-mse.yaml --out paper-mse",
            "rmtllmf reproduce --config study.yaml --shard 0/2 --out shard0   # machine 1",
            "rmtllmf reproduce --config study.yaml --shard 1/2 --out shard1   # machine 2",
            "rmtllmf reproduce --merge-shards shard0 shard1 --out results",
            "rmtllmf reproduce --quick --executor ray --workers 2 --out results-ray",
            "rmtllmf reproduce --config clip.yaml --executor ray --address auto "
            "--gpus-per-run 0.25",
        ),
    )
    p.add_argument("--quick", action="store_true", help="a sample of subsets (minutes)")
    p.add_argument(
        "--config", type=Path, default=None, help="YAML study config (default: the full grid)"
    )
    p.add_argument("--out", type=Path, default=Path("results"), help="results directory")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="zoo / pool cache directory (default: $RMTLLMF_CACHE or ~/.cache/rmtllmf)",
    )
    p.add_argument("--reset", action="store_true", help="discard an existing results database")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help="arithmetic of realignment and evaluation: bf16 autocasts them to bfloat16 (fast "
        "where the CPU has bf16 units, e.g. AMX or AVX512-BF16, and on GPUs); a setting of the "
        "runs, stored with them (default: the config's sweep.precision, fp32)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="check, offline and in seconds, that every checkpoint and dataset the config names "
        "is present and loadable, print the plan and its estimated time, and run nothing "
        "(exit status 2 naming what is missing)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into an --out directory that holds files the study did not write (its "
        "report, figures and records replace files of the same names; nothing else is touched)",
    )
    p.add_argument(
        "--max-runs", type=int, default=None, help="stop after this many runs (default: all)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes for the zoo, and runs at once in the sweep (processes, or Ray's CPUs; "
        "default: cores for tiny-vit and hf-text, 1 for hf-clip and hf-causal; with --address, "
        "the cluster's CPUs over --cpus-per-run)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    p.add_argument(
        "--executor",
        choices=("process", "ray"),
        default="process",
        help="where the sweep's runs execute: local processes, or Ray tasks (one per channel "
        "use; pip install 'rmtllmf[ray]'); docs/scaling.md",
    )
    p.add_argument(
        "--address",
        default=None,
        help="with --executor ray: join this Ray cluster (e.g. auto, or HEAD:6379 from `ray "
        "start --head`) instead of starting a local Ray (default: local)",
    )
    p.add_argument(
        "--cpus-per-run",
        type=float,
        default=1.0,
        help="CPUs (threads) each run takes; fractions with Ray",
    )
    p.add_argument(
        "--gpus-per-run",
        type=float,
        default=0.0,
        help="with --executor ray: GPUs each run takes, e.g. 0.25 puts four runs on one GPU",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="run only shard I of N (0 <= I < N) into --out, without a report; every machine "
        "runs the same config with its own I (default: the whole plan)",
    )
    p.add_argument(
        "--merge-shards",
        nargs="+",
        type=Path,
        default=None,
        metavar="SHARD",
        help="combine finished shards (their --out directories or results.db files) into --out "
        "and write the report over the union (default: off)",
    )


def _positive(args: argparse.Namespace, *names: str) -> None:
    """Each named flag, when given, is at least 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise InputError(f"{flag} {value} is below 1; give 1 or more, or leave it out")


def _check_scale(args: argparse.Namespace) -> None:
    """The executor flags fit together and are in range."""
    finite = math.isfinite(args.cpus_per_run) and math.isfinite(args.gpus_per_run)
    if not finite or args.cpus_per_run <= 0 or args.gpus_per_run < 0:
        raise InputError(
            "--cpus-per-run must be above 0 and --gpus-per-run at least 0 (e.g. --cpus-per-run "
            "1 --gpus-per-run 0.25)"
        )
    ray_only = [
        flag
        for flag, value in (("--address", args.address), ("--gpus-per-run", args.gpus_per_run))
        if value
    ]
    if ray_only and args.executor != "ray":
        raise InputError(f"{', '.join(ray_only)} only apply with --executor ray; add it")
    if args.executor == "process" and args.cpus_per_run != int(args.cpus_per_run):
        raise InputError(
            f"--cpus-per-run {args.cpus_per_run}: a process runs on whole threads; give an "
            "integer, or use --executor ray for fractions"
        )


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` as ``(I, N)``."""
    i, sep, n = text.partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        shard = (-1, -1)
    if not sep or not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise InputError(
            f"--shard {text!r} is not a shard; give I/N with 0 <= I < N, e.g. --shard 0/2 and "
            "--shard 1/2 on two machines"
        )
    return shard


def _merge(args: argparse.Namespace) -> int:
    """``--merge-shards``: combine the shards and print the report's table."""
    from rmtllmf.app.reproduce import merge_shards

    given = [
        flag
        for flag, value in (
            ("--quick", args.quick),
            ("--config", args.config),
            ("--shard", args.shard),
            ("--max-runs", args.max_runs),
            ("--reset", args.reset),
        )
        if value
    ]
    if given:
        raise InputError(f"--merge-shards only combines finished shards; drop {', '.join(given)}")
    merged, summary = merge_shards(args.merge_shards, args.out, force=args.force)
    notice(
        f"merged {len(merged.sources)} shard(s) into {args.out / 'results.db'}: "
        f"{merged.added} run(s) added, {merged.present} already there"
    )
    _print_summary(summary, args.out)
    return 0


def _study_config(args: argparse.Namespace) -> ReproduceConfig:
    """The study of ``--config``, ``--quick`` or the default grid, its sweep section checked
    before any pool is built."""
    from rmtllmf.app.reproduce import ReproduceConfig, load_config, quick_config, sweep_config

    if args.quick and args.config is not None:
        raise InputError("--quick runs the embedded default; drop --config or --quick")
    cfg = (
        load_config(args.config)
        if args.config is not None
        else quick_config()
        if args.quick
        else ReproduceConfig()
    )
    if args.precision is not None:
        cfg = cfg.model_copy(update={"sweep": {**cfg.sweep, "precision": args.precision}})
    if sweep_config(cfg).precision == "bf16" and not _has_bf16_units():
        notice(
            "this CPU has no bfloat16 units (no AVX512-BF16 or AMX): bf16 runs are emulated and "
            "slower than fp32 here"
        )
    return cfg


def _has_bf16_units() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check), or a GPU is there."""
    import torch

    return bool(torch.cuda.is_available() or torch.ops.mkldnn._is_mkldnn_bf16_supported())


def run(args: argparse.Namespace) -> int:
    """Run the study (or a shard of it, or merge shards) and print the headline table."""
    from rmtllmf.app.reproduce import Scale, reproduce, reproduce_shard, study_notices

    check_output_dir(check_out_given(args.out))
    check_output_dir_owner(args.out, "reproduce", force=args.force)
    if args.cache is not None:
        check_output_dir(args.cache, "--cache")
    _positive(args, "max_runs", "workers", "threads")
    _check_scale(args)
    if args.merge_shards:
        return _merge(args)
    shard = parse_shard(args.shard) if args.shard is not None else (0, 1)
    cfg = _study_config(args)
    keep_freed_memory()
    workers = args.workers or ((os.cpu_count() or 1) if cfg.entry.parallel else 1)
    if args.check:
        return _check(cfg, workers)
    in_flight = 0 if (args.address and not args.workers) else workers  # 0: the cluster's size
    scale = Scale(args.executor, in_flight, args.address, args.cpus_per_run, args.gpus_per_run)
    cache = args.cache or default_cache()
    for line in study_notices(
        cfg, args.out, cache, workers, shard=shard, reset=args.reset, max_runs=args.max_runs
    ):
        notice(line)
    set_threads(args.threads)

    if shard[1] > 1:
        runs = reproduce_shard(
            cfg,
            args.out,
            shard,
            cache=cache,
            reset=args.reset,
            max_runs=args.max_runs,
            workers=workers,
            scale=scale,
            force=args.force,
        )
        print(
            f"shard {shard[0]}/{shard[1]}: {runs} run(s) in {args.out / 'results.db'}; when every "
            "shard is done, combine them with: rmtllmf reproduce --merge-shards SHARD_DIR... "
            "--out DIR"
        )
        return 0
    summary = reproduce(
        cfg,
        args.out,
        cache=cache,
        reset=args.reset,
        max_runs=args.max_runs,
        workers=workers,
        scale=scale,
        force=args.force,
    )
    _print_summary(summary, args.out)
    return 0


def _check(cfg: ReproduceConfig, workers: int) -> int:
    """``--check``: what the family's preflight found, the plan and its time; an error naming
    the first missing asset (every one is listed above it)."""
    from rmtllmf.app.preflight import preflight

    report = preflight(cfg, workers)
    found = report.family
    print(f"study of family {cfg.family}: {len(found.found)} asset(s) found")
    for line in found.found:
        print(f"  found    {line}")
    for line in found.missing:
        print(f"  MISSING  {line}")
    entries = f"{found.entries:,}" if found.entries is not None else "unknown"
    print(
        f"plan: {report.runs} run(s) in {report.channel_uses} channel use(s), {entries} entries "
        f"per task vector; about {minutes(report.seconds)} on {workers} process(es) at "
        f"~{cfg.entry.seconds_per_run:g} s per run"
    )
    if found.missing:
        more = f" ({len(found.missing) - 1} more listed above)" if len(found.missing) > 1 else ""
        raise InputError(f"{found.missing[0]}{more}")
    return 0


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    """The headline table: normalized accuracy per link, scenario and defense, and the floors;
    first, on stderr, a word when the report covers less than the study's plan."""
    note = summary.get("coverage", {}).get("note")
    if note:
        notice(note.replace("**", ""))
    console = rich_console(120)
    table = Table(title=f"Normalized accuracy at N = {summary['n_tasks']} ({out})")
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
        f"chance {summary['chance']:.3f}; report: {out / 'report.md'}"
    )
