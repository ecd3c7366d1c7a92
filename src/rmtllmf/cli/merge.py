"""``rmtllmf merge``: merge checkpoints on disk (streaming, one tensor at a time).

Flags (``--base``, ``--models``, ``--method``, ...) or a mergekit-style YAML file (``--config``)
say what to merge; ``--out`` is a ``.safetensors`` file or, for a Hugging Face base directory, a
directory that ``from_pretrained`` loads. The output path is checked before any work; the merge
is written beside it and renamed into place, so a failed merge writes nothing. An existing
``--out`` is replaced only when a merge wrote it (else ``--force``), and whatever a user added to
an earlier output directory stays.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rmtllmf.errors import InputError

OPTION_FLAGS: dict[str, tuple[type, str]] = {
    "density": (float, "ties, dare with --combine ties: fraction of entries kept (default 0.2)"),
    "merge": (str, "ties, dare with --combine ties: disjoint merge mean|sum|max (default mean)"),
    "drop-rate": (float, "dare: drop probability p (default 0.5)"),
    "combine": (str, "dare: task-arithmetic|ties (default task-arithmetic)"),
    "seed": (int, "dare: seed of the drop masks (default 0)"),
}
"""The merge methods' options as flags; each is passed only when given, and the method's options
model validates it (a flag the method does not take is an error)."""

FLAGS = {
    "drop_rate": "--drop-rate",
    "scaling": "--lambda",
    "weights": "--weights",
    "allow_nonfinite": "--allow-nonfinite",
    "allow_pickle": "--allow-pickle",
    "max_shard_size": "--max-shard-size",
}
"""Library names that may appear in an error, and the flags that set them."""

RECORD_NAME = "rmtllmf_merge.json"
"""The resolved merge record inside an output directory (beside a file: ``OUT.json``)."""

DTYPE_CHOICES = ("float32", "float16", "bfloat16")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "merge",
        help="merge fine-tuned checkpoints or LoRA adapters into one model (task arithmetic, "
        "average, TIES, DARE)",
        description="Merge fine-tuned models into their base, streaming (a slice of one tensor\n"
        "per model in memory): theta = theta_base + merge(tau_1, ..., tau_N).\n\n"
        "Inputs: .safetensors files, Hugging Face model directories (sharded or not), and PEFT\n"
        "LoRA adapter directories as fine-tuned models. NaN or inf in an input is refused\n"
        "unless --allow-nonfinite. Output: a .safetensors file with the base's keys, shapes\n"
        "and dtypes (the resolved merge beside it as OUT.json), or, for a Hugging Face base\n"
        "directory, a directory that from_pretrained loads: config, tokenizer and processor\n"
        "files carried over from the base, weights sharded above --max-shard-size,\n"
        f"{RECORD_NAME} inside. A failed merge writes nothing.",
        epilog="examples:\n"
        "  rmtllmf merge --base base/ --models ft-a/ ft-b/ --lambda 0.4 --out merged/\n"
        "  rmtllmf merge --base base.safetensors --models a.safetensors b.safetensors \\\n"
        "      --method ties --density 0.2 --lambda 1.0 --out merged.safetensors\n"
        "  rmtllmf merge --base base/ --models lora-a/ lora-b/ --out merged/   # LoRA adapters\n"
        "  rmtllmf merge --config configs/merge/task-arithmetic.yaml --out merged/  # mergekit\n"
        "see docs/merging.md",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="mergekit-style YAML (merge_method, base_model, models, parameters, dtype) "
        "instead of --base/--models/--method/--lambda/--weights/--dtype and the method options "
        "(default: none, use the flags)",
    )
    p.add_argument(
        "--method",
        default=None,
        help="task-arithmetic (eq. 6), average, ties, dare, or a method registered in code "
        "(default task-arithmetic)",
    )
    p.add_argument(
        "--base",
        default=None,
        help="base model: .safetensors file or HF directory (required unless --config; no default)",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="fine-tuned models: .safetensors files, HF directories or LoRA adapter "
        "directories (required unless --config; no default)",
    )
    p.add_argument(
        "--lambda", dest="scaling", type=float, default=None, help="scaling lambda_N (default 0.3)"
    )
    p.add_argument(
        "--weights",
        nargs="+",
        type=float,
        default=None,
        help="one weight per model, scaling its task vector before the merge (mergekit's "
        "weight; default: none, all 1)",
    )
    for flag, (kind, help_text) in OPTION_FLAGS.items():
        p.add_argument(f"--{flag}", type=kind, default=None, help=help_text)
    p.add_argument("--include", nargs="*", default=["*"], help="parameter name globs to merge")
    p.add_argument("--exclude", nargs="*", default=[], help="globs kept at the base's values")
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default=None,
        help="dtype of the output's floating-point tensors (default: the base's)",
    )
    p.add_argument(
        "--max-shard-size",
        default=None,
        help="directory output: largest weights file before sharding with an index (5GB, "
        "500MB, 500KB, 2GiB; default 5GB)",
    )
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="accept NaN / inf values in the inputs (and the output) instead of refusing them",
    )
    p.add_argument("--allow-pickle", action="store_true", help="accept trusted pickle checkpoints")
    p.add_argument(
        "--out",
        required=True,
        help="output: a .safetensors file, or a directory (HF base: loads with from_pretrained); "
        "never one of the inputs; an existing one only if a merge wrote it (else --force)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write --out even where an existing file or directory was not written by a merge "
        "(only the merge's own files are replaced; nothing else in a directory is touched)",
    )


def _resolve(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, Any]:
    """``(base, models, MergeConfig, ParamFilter, dtype)`` from the flags or ``--config``."""
    from rmtllmf.fusion import MergeConfig, ParamFilter
    from rmtllmf.fusion.merge_yaml import DTYPES, load_merge_config
    from rmtllmf.fusion.method_registry import get_method

    given = {flag.replace("-", "_"): getattr(args, flag.replace("-", "_")) for flag in OPTION_FLAGS}
    options = {k: v for k, v in given.items() if v is not None}
    if args.config is not None:
        clashing = [
            f"--{name.replace('_', '-')}"
            for name, value in {
                "base": args.base,
                "models": args.models,
                "method": args.method,
                "lambda": args.scaling,
                "weights": args.weights,
                "dtype": args.dtype,
                **options,
            }.items()
            if value is not None
        ]
        clashing += [f for f, v in (("--include", args.include != ["*"]),
                                    ("--exclude", bool(args.exclude))) if v]  # fmt: skip
        if clashing:
            raise InputError(
                f"--config {args.config} says what to merge; drop {', '.join(clashing)} (or "
                "drop --config and give everything as flags)"
            )
        plan = load_merge_config(args.config)
        return plan.base, list(plan.models), plan.config, plan.params, plan.dtype
    missing = [f for f, v in (("--base", args.base), ("--models", args.models)) if v is None]
    if missing:
        raise InputError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required (or give "
            "--config merge.yaml); see rmtllmf merge --help"
        )
    method = "task-arithmetic" if args.method is None else args.method
    if args.scaling is not None and not get_method(method).scaled:
        raise InputError(
            f"--method {method} takes no --lambda (it does not scale the merge); drop --lambda, "
            "or use --method task-arithmetic to scale"
        )
    scaling = 0.3 if args.scaling is None else args.scaling
    weights = None if args.weights is None else tuple(args.weights)
    config = MergeConfig(method=method, scaling=scaling, options=options, weights=weights)
    params = ParamFilter(include=tuple(args.include), exclude=tuple(args.exclude))
    dtype = DTYPES[args.dtype] if args.dtype else None
    return args.base, list(args.models), config, params, dtype


def _record(base: Any, models: Any, config: Any, params: Any, dtype: Any, args: Any) -> str:
    """The resolved merge as JSON (``lambda`` is null for a method that does not scale)."""
    from rmtllmf.fusion.method_registry import get_method
    from rmtllmf.fusion.safetensors_format import dtype_name

    merge = config.model_dump(mode="json")
    if not get_method(config.method).scaled:
        merge["scaling"] = None
    record = {
        "base": str(base),
        "models": [str(m) for m in models],
        "merge": merge,
        "params": params.model_dump(mode="json"),
        "dtype": None if dtype is None else dtype_name(dtype),
        **({"config": str(args.config)} if args.config is not None else {}),
    }
    return json.dumps(record, indent=2)


def _check_record_path(record_path: Path, inputs: list[Any], force: bool) -> None:
    """The record beside a file output: never an input, and an existing file there only if a
    merge wrote it (a JSON object with a ``merge`` entry), else ``--force``."""
    for given in inputs:
        if Path(given).resolve() == record_path.resolve():
            raise InputError(
                f"--out: its record {record_path} is one of the inputs; give another --out"
            )
    if record_path.exists() and not force:
        try:
            ours = "merge" in json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, TypeError):
            ours = False
        if not ours:
            raise InputError(
                f"--out: the merge records its settings in {record_path}, which exists and was "
                "not written by rmtllmf merge; move it away, give another --out, or add --force"
            )


def run(args: argparse.Namespace) -> int:
    """Check the output path, resolve the merge, merge, print one line."""
    from rmtllmf._io import atomic_output
    from rmtllmf.fusion import merge_checkpoints
    from rmtllmf.fusion.hf_dir import DEFAULT_MAX_SHARD_SIZE, output_kind, parse_size

    base, models, config, params, dtype = _resolve(args)
    inputs = [base, *models, *([args.config] if args.config is not None else [])]
    out = Path(args.out)
    kind = output_kind(args.out, inputs, force=args.force)
    if args.max_shard_size is not None and kind == "file":
        raise InputError(
            f"--max-shard-size shards a directory output; --out {out} is one .safetensors file: "
            "drop --max-shard-size, or give --out a directory"
        )
    max_shard_size = args.max_shard_size or DEFAULT_MAX_SHARD_SIZE
    parse_size(max_shard_size)
    text = _record(base, models, config, params, dtype, args)
    merge_args: dict[str, Any] = {
        "allow_pickle": args.allow_pickle,
        "allow_nonfinite": args.allow_nonfinite,
        "dtype": dtype,
        "max_shard_size": max_shard_size,
        "force": args.force,
    }
    if kind == "directory":
        result = merge_checkpoints(
            base, models, out, config, params, extra_files={RECORD_NAME: text}, **merge_args
        )
    else:
        record_path = Path(f"{out}.json")
        _check_record_path(record_path, inputs, args.force)
        # the record is written first and published after the weights: a full disk or a failed
        # merge leaves neither
        with atomic_output(record_path) as tmp:
            tmp.write_text(text, encoding="utf-8")
            result = merge_checkpoints(base, models, out, config, params, **merge_args)
    shards = ""
    if result.directory is not None:
        n = len(result.directory.shards)
        shards = f" ({n} shard{'s' if n > 1 else ''}, from_pretrained loads it)"
        if result.directory.missing:
            print(
                f"rmtllmf: note: the base has no {'; no '.join(result.directory.missing)}; "
                f"{out} loads as a model, but load the tokenizer / processor elsewhere",
                file=sys.stderr,
            )
    print(f"merged {len(models)} models with {config.method} into {out}{shards}")
    return 0
