"""``rmtllmf merge``: merge checkpoints on disk (streaming, one tensor at a time)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rmtllmf._io import write_text_atomic

OPTION_FLAGS: dict[str, tuple[type, str]] = {
    "density": (float, "ties, dare with --combine ties: fraction of entries kept (default 0.2)"),
    "merge": (str, "ties, dare with --combine ties: disjoint merge mean|sum|max (default mean)"),
    "drop-rate": (float, "dare: drop probability p (default 0.5)"),
    "combine": (str, "dare: task-arithmetic|ties (default task-arithmetic)"),
    "seed": (int, "dare: seed of the drop masks (default 0)"),
}
"""The merge methods' options as flags; each is passed only when given, and the method's options
model validates it (a flag the method does not take is an error)."""


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
    for flag, (kind, help_text) in OPTION_FLAGS.items():
        p.add_argument(f"--{flag}", type=kind, default=None, help=help_text)
    p.add_argument("--include", nargs="*", default=["*"], help="parameter name globs to merge")
    p.add_argument("--exclude", nargs="*", default=[], help="globs kept at the base's values")
    p.add_argument("--allow-pickle", action="store_true", help="accept trusted pickle checkpoints")
    p.add_argument("--out", required=True, help="output .safetensors file")


def run(args: argparse.Namespace) -> int:
    from rmtllmf.fusion import MergeConfig, ParamFilter, merge_checkpoints

    given = {flag.replace("-", "_"): getattr(args, flag.replace("-", "_")) for flag in OPTION_FLAGS}
    options = {k: v for k, v in given.items() if v is not None}
    config = MergeConfig(method=args.method, scaling=args.scaling, options=options)
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
