"""``rmtllmf merge``: merge checkpoints on disk (streaming, one tensor at a time)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rmtllmf._io import write_text_atomic


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "merge",
        help="merge fine-tuned checkpoints into one model (task arithmetic, average, TIES, DARE)",
        description="Streaming merge: a slice of one tensor per model in memory; writes "
        "safetensors with the base's keys, shapes and dtypes, and the resolved config as OUT.json.",
    )
    p.add_argument(
        "--method",
        default="task-arithmetic",
        help="task-arithmetic (eq. 6), average, ties, dare, or a method registered in code",
    )
    p.add_argument("--base", required=True, help="base model: .safetensors file or HF directory")
    p.add_argument("--models", nargs="+", required=True, help="fine-tuned models (same format)")
    p.add_argument("--lambda", dest="scaling", type=float, default=0.3, help="scaling lambda_N")
    p.add_argument("--density", type=float, default=0.2, help="TIES: fraction of entries kept")
    p.add_argument("--ties-merge", choices=["mean", "sum", "max"], default="mean")
    p.add_argument("--drop-rate", type=float, default=0.5, help="DARE: drop probability p")
    p.add_argument("--dare-combine", choices=["task-arithmetic", "ties"], default="task-arithmetic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--include", nargs="*", default=["*"], help="parameter name globs to merge")
    p.add_argument("--exclude", nargs="*", default=[], help="globs kept at the base's values")
    p.add_argument("--allow-pickle", action="store_true", help="accept trusted pickle checkpoints")
    p.add_argument("--out", required=True, help="output .safetensors file")


def run(args: argparse.Namespace) -> int:
    from rmtllmf.fusion import MergeConfig, ParamFilter, merge_checkpoints

    config = MergeConfig(
        method=args.method,
        scaling=args.scaling,
        density=args.density,
        ties_merge=args.ties_merge,
        drop_rate=args.drop_rate,
        dare_combine=args.dare_combine,
        seed=args.seed,
    )
    params = ParamFilter(include=tuple(args.include), exclude=tuple(args.exclude))
    out = Path(args.out)
    merge_checkpoints(args.base, args.models, out, config, params, allow_pickle=args.allow_pickle)
    record = {
        "base": str(args.base),
        "models": [str(m) for m in args.models],
        "merge": config.model_dump(),
        "params": params.model_dump(),
    }
    write_text_atomic(out.with_suffix(out.suffix + ".json"), json.dumps(record, indent=2))
    print(f"merged {len(args.models)} models with {config.method} into {out}")
    return 0
