"""The ``tiny-vit`` family: the embedded tiny ViT, its synthetic suite and the zoo of experts.

Registers :data:`FAMILY` (study section ``zoo:``, :class:`~rmtllmf.pools.zoo_config.ZooConfig`)
and holds what its commands do: the build notice, ``rmtllmf evaluate`` (the embedded tasks
against the zoo's experts) and ``rmtllmf finetune`` (one expert through the zoo).
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from pathlib import Path

from rmtllmf._io import default_cache, mark_output_dir
from rmtllmf._progress import minutes, notice
from rmtllmf.app.evaluate import named_checkpoint_error
from rmtllmf.app.family_registry import Family, Preflight, Scores, register_family
from rmtllmf.app.preflight import float_entries, unreadable
from rmtllmf.errors import CheckpointError, InputError
from rmtllmf.pools.base import ModelPool
from rmtllmf.pools.zoo_config import ZooConfig

ZOO_SECONDS_PER_STEP = 0.1
"""Single-threaded seconds per fine-tuning step of the embedded zoo at batch 64 + 16 anchor
images (docs/embedded-zoo.md: eight 800-step fine-tunes of 67-70 s each, two at a time)."""


ZOO_SECONDS_PER_IMAGE = 2e-4
"""Seconds to render one synthetic image (data generation before the fine-tunes)."""


def zoo_build_notice(cfg: ZooConfig, root: Path, workers: int = 1) -> str | None:
    """A line saying, before it starts, that the embedded zoo will be built, how much and how
    long; None when the zoo under ``root`` is complete."""
    from rmtllmf.pools.tiny_vit_pool import missing_finetunes

    missing = missing_finetunes(root, cfg)
    if not missing:
        return None
    per_step = ZOO_SECONDS_PER_STEP * (cfg.batch + cfg.anchor_batch * (cfg.anchor_weight > 0)) / 80
    per_task = cfg.steps * per_step + ZOO_SECONDS_PER_IMAGE * (cfg.n_train + cfg.n_val + cfg.n_test)
    parallel = max(1, min(workers, len(missing)))
    seconds = per_task * len(missing) / parallel
    return (
        f"building the embedded zoo first: {len(missing)} fine-tune(s) of {cfg.steps} steps, "
        f"about {minutes(seconds)} on {parallel} process(es); cached under {root} and reused "
        "by later commands"
    )


def announce_zoo(root: Path, cfg: ZooConfig, workers: int = 1) -> None:
    """Print :func:`zoo_build_notice` on stderr where the zoo must be built."""
    line = zoo_build_notice(cfg, root, workers)
    if line is not None:
        notice(line)


def check_embedded_tasks(tasks: Sequence[str] | None, flag: str = "--tasks") -> None:
    """Each of ``tasks`` is a task of the embedded suite, named once (checked before any
    work)."""
    from rmtllmf.data.synthetic import TASK_NAMES

    unknown = [t for t in tasks or () if t not in TASK_NAMES]
    if unknown:
        raise InputError(
            f"{flag}: {', '.join(unknown)} not in the embedded suite; choose from "
            f"{', '.join(TASK_NAMES)}"
        )
    repeated = sorted({t for t in tasks or () if list(tasks or ()).count(t) > 1})
    if repeated:
        raise InputError(f"{flag} names {', '.join(repeated)} more than once; give each task once")


def build_pool(cfg: ZooConfig, cache: Path, progress: bool, workers: int) -> ModelPool:
    """The zoo of ``cfg`` under ``cache`` (:func:`~rmtllmf.pools.tiny_vit_pool.build_zoo`)."""
    from rmtllmf.pools.tiny_vit_pool import build_zoo

    return build_zoo(cache, cfg, progress=progress, workers=workers)


def _check_against_base(model: str, base_file: Path) -> None:
    """``--model`` has the base's tensors (names and shapes): read from the headers only."""
    from rmtllmf.fusion import LazyCheckpoint

    with LazyCheckpoint(model) as ckpt, LazyCheckpoint(base_file) as base:
        names, theirs = base.keys(), ckpt.keys()
        missing = [k for k in names if k not in ckpt]
        unexpected = [k for k in theirs if k not in base]
        shapes = [k for k in names if k in ckpt and ckpt.meta(k)[0] != base.meta(k)[0]]
    if missing or unexpected or shapes:
        parts = [
            f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("lacks", missing), ("has extra", unexpected), ("reshapes", shapes))
            if keys
        ]
        raise InputError(
            f"--model {model} is not a tiny-vit checkpoint of this base: it {'; '.join(parts)}; "
            "give a fine-tune or merge of the embedded base (or --family hf-clip)"
        )


def tiny_vit_scores(args: argparse.Namespace) -> Scores:
    """Score ``--model`` and the embedded zoo's fine-tunes on ``--tasks`` (default: all); the
    zoo is the default eight-task one whatever ``--tasks`` says (each expert is fine-tuned
    anchored on the other tasks' domains, so a zoo of fewer tasks has other experts), built
    once and cached; ``--model`` is checked against the base before (the command announces a
    build)."""
    from rmtllmf.fusion import load_state_dict
    from rmtllmf.pools.tiny_vit_pool import build_zoo
    from rmtllmf.pools.zoo_config import base_path

    check_embedded_tasks(args.tasks)
    given = [
        flag
        for flag, value in (
            ("--base", args.base),
            ("--data", args.data),
            ("--finetuned", args.finetuned),
            ("--online", args.online),
        )
        if value
    ]
    if given:
        raise InputError(
            f"{', '.join(given)} apply only to --family hf-clip; drop them, or add --family "
            "hf-clip (tiny-vit scores the embedded tasks against the embedded zoo's experts)"
        )
    if args.split not in ("val", "test"):
        raise InputError(f"--split {args.split!r}: the embedded tasks have val and test; pick one")
    cfg = ZooConfig()  # the embedded zoo that reproduce and zoo build use; --tasks picks tasks
    tasks = tuple(args.tasks) if args.tasks else cfg.tasks
    root = default_cache() / "zoo"
    base_file = base_path(cfg, root / "base")
    try:
        if base_file.is_file():
            _check_against_base(args.model, base_file)
        state = load_state_dict(args.model)
    except CheckpointError as exc:
        raise named_checkpoint_error(exc, "--model", args.model) from exc
    if not args.json:
        announce_zoo(root, cfg)
    zoo = build_zoo(root, cfg, progress=not args.json)
    acc = zoo.task_accuracy(state, tasks, args.split)
    finetuned = {t: zoo.finetuned_accuracy(t, args.split) for t in tasks}
    return acc, finetuned, dict.fromkeys(tasks, args.split)


HF_CLIP_ONLY = (
    "train_folder",
    "val_folder",
    "dataset",
    "dataset_config",
    "templates",
    "anchor_folder",
    "lora",
    "lora_rank",
    "online",
)
"""Flags that only --family hf-clip reads (tiny-vit trains on its embedded task)."""


def _check_tiny_vit_flags(args: argparse.Namespace) -> None:
    """Refuse hf-clip's flags with --family tiny-vit, instead of ignoring them."""
    given = [f"--{name.replace('_', '-')}" for name in HF_CLIP_ONLY if getattr(args, name)]
    if given:
        raise InputError(
            f"{', '.join(given)} apply only to --family hf-clip; drop them, or add --family "
            "hf-clip (the tiny-vit expert is fully fine-tuned on its embedded task)"
        )


def finetune_tiny_vit(args: argparse.Namespace) -> int:
    """Fine-tune the tiny base on one embedded task (through the zoo) and write the result."""
    from rmtllmf.pools.tiny_vit_pool import build_zoo
    from rmtllmf.training.clip import write_result

    _check_tiny_vit_flags(args)
    if not args.task:
        raise InputError("--family tiny-vit needs --task (one of the embedded tasks)")
    check_embedded_tasks([args.task], "--task")
    cfg = ZooConfig(
        tasks=(args.task,),
        steps=args.steps,
        seed=args.seed,
        base=args.base,
        **({"lr": args.lr} if args.lr is not None else {}),
        **({"anchor_weight": args.anchor_weight} if args.anchor_weight is not None else {}),
    )
    announce_zoo(default_cache() / "zoo", cfg)
    zoo = build_zoo(default_cache() / "zoo", cfg, progress=True)
    record = {
        "family": "tiny-vit",
        "task": args.task,
        "zoo": cfg.model_dump(),
        "base_accuracy": zoo.record.base[args.task],
        "finetuned_accuracy": zoo.record.finetuned[args.task],
    }
    mark_output_dir(args.out, "finetune")
    out = write_result(args.out, zoo.base_state, zoo.finetuned[args.task], record)
    print(
        f"fine-tuned {args.task}: test accuracy {record['base_accuracy']['test']:.3f} -> "
        f"{record['finetuned_accuracy']['test']:.3f}; wrote {out}"
    )
    return 0


def check_pool(cfg: ZooConfig) -> Preflight:
    """The base (``base:`` or the shipped one) loadable as a tiny-vit, and the shipped experts'
    files matching their sha256 where the config uses them (else they are fine-tuned on the
    first run, and cached)."""
    from rmtllmf.pools.zoo_config import (
        load_base,
        shipped_base_path,
        shipped_experts,
        shipped_manifest,
    )

    found: list[str] = []
    missing: list[str] = []
    base = Path(cfg.base) if cfg.base else shipped_base_path()
    entries = None
    try:
        load_base(base)
        entries = float_entries(base)
        found.append(f"base {base} ({entries:,} entries)")
    except (CheckpointError, InputError) as exc:
        fix = "give zoo.base a tiny-vit checkpoint (scripts/pretrain_tiny_base.py makes one)"
        missing.append(unreadable("base", str(base), exc, fix))
        return Preflight(found, missing, entries)
    shipped = shipped_experts(cfg, base)
    manifest = shipped_manifest()
    if shipped is None or manifest is None:
        found.append(f"experts: {len(cfg.tasks)} fine-tuned on the first run, then cached")
        return Preflight(found, missing, entries)
    bad = [
        name
        for name, sha in manifest["sha256"].items()
        if not (shipped / name).is_file()
        or hashlib.sha256((shipped / name).read_bytes()).hexdigest() != sha
    ]
    if bad:
        missing.append(
            f"shipped experts: {', '.join(bad[:3])} missing or changed (sha256); reinstall "
            "rmtllmf (pip install --force-reinstall rmtllmf), or use zoo.experts: trained"
        )
    else:
        found.append(f"shipped experts: {len(manifest['sha256'])} files, sha256 as recorded")
    return Preflight(found, missing, entries)


FAMILY = register_family(
    Family(
        name="tiny-vit",
        section="zoo",
        config=ZooConfig,
        build=build_pool,
        tasks=lambda cfg: cfg.tasks,
        seconds_per_run=2.9,
        parallel=True,
        announce=zoo_build_notice,
        evaluate=tiny_vit_scores,
        finetune=finetune_tiny_vit,
        check=check_pool,
    )
)
