"""The ``hf-clip`` family: a Hugging Face CLIP's vision tower on image datasets, the paper's
setting (CLIP ViT-B/16 on eight tasks).

Registers :data:`FAMILY` (study section ``clip:``,
:class:`~rmtllmf.pools.clip_pool.ClipPoolConfig`, required: it names the checkpoints) and holds
what its commands do: ``rmtllmf evaluate`` (zero-shot heads on image folders or datasets) and
``rmtllmf finetune`` (one task's vision tower, fully or with LoRA).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from rmtllmf._io import mark_output_dir
from rmtllmf.app.evaluate import named_checkpoint_error, pairs
from rmtllmf.app.family_registry import Family, Preflight, Scores, register_family
from rmtllmf.app.preflight import checkpoint_fix, float_entries, unreadable
from rmtllmf.data.real import LabelledImages, hold_out, load_hf_dataset, load_image_folder
from rmtllmf.errors import CheckpointError, InputError
from rmtllmf.models.hf_clip import BASE_IDS, DEFAULT_TEMPLATES, HfClip, vision_state
from rmtllmf.pools.base import ModelPool
from rmtllmf.pools.clip_pool import ClipPool, ClipPoolConfig, ClipTaskSpec, fetch_checkpoint
from rmtllmf.training.clip import FinetuneConfig, clip_accuracy, finetune_clip, write_result


def build_pool(cfg: ClipPoolConfig, cache: Path, progress: bool, workers: int) -> ModelPool:
    """The CLIP pool of ``cfg``, its accuracies cached under ``cache`` (no training: the
    checkpoints are given)."""
    return ClipPool(cfg, cache_dir=cache)


def _is_folder(path: str) -> bool:
    """An image folder (``root/<class>/<images>``), not a ``save_to_disk`` dataset."""
    return Path(path).is_dir() and not (Path(path) / "dataset_dict.json").exists()


def _load_suites(
    args: argparse.Namespace, clip: HfClip, data_paths: Mapping[str, str]
) -> dict[str, LabelledImages]:
    """Each task's data: an image folder, or a dataset (hub id or ``save_to_disk`` directory)."""
    suites = {}
    for task, path in data_paths.items():
        suites[task] = (
            load_image_folder(path, clip.image_size)
            if _is_folder(path)
            else load_hf_dataset(path, args.split, clip.image_size, offline=not args.online)
        )
    return suites


def hf_clip_scores(args: argparse.Namespace) -> Scores:
    """Score ``--model`` and the ``--finetuned`` checkpoints with zero-shot heads on ``--data``."""
    from rmtllmf.fusion import LazyCheckpoint

    if args.tasks:
        raise InputError(
            "--tasks picks embedded tasks (--family tiny-vit); with hf-clip the tasks are the "
            "names in --data TASK=PATH: drop --tasks"
        )
    data_paths = pairs(args.data, "--data")
    if not data_paths:
        raise InputError("--family hf-clip needs --data TASK=PATH for at least one task")
    finetuned_paths = pairs(args.finetuned, "--finetuned")
    for flag, path in [
        ("--model", args.model),
        *(("--finetuned", p) for p in finetuned_paths.values()),
    ]:
        try:
            with LazyCheckpoint(path):  # readable, not pickled: checked before any model loads
                pass
        except CheckpointError as exc:
            raise named_checkpoint_error(exc, flag, path) from exc
    clip = HfClip.from_pretrained(args.base or BASE_IDS["vit-b-16"], offline=not args.online)
    suites = _load_suites(args, clip, data_paths)
    heads = {t: clip.zero_shot_head(d.classnames) for t, d in suites.items()}

    def score(checkpoint: str) -> dict[str, float]:
        """Accuracy per task with ``checkpoint``'s vision tower loaded."""
        clip.load_vision_state(vision_state(checkpoint))
        return {t: clip_accuracy(clip, heads[t], d) for t, d in suites.items()}

    finetuned = {}
    for task, ckpt in finetuned_paths.items():
        finetuned[task] = score(ckpt)[task]
    scored = {t: "all images" if _is_folder(p) else args.split for t, p in data_paths.items()}
    return score(args.model), finetuned, scored


def _train_and_val(
    args: argparse.Namespace, clip: HfClip
) -> tuple[LabelledImages, LabelledImages, str]:
    """The training and validation data and where validation comes from: ``--val-folder``, a
    seeded stratified hold-out of ``--train-folder`` (never trained on), or the dataset's
    validation split (or a seeded 10% of its train split, excluded from training)."""
    if args.train_folder:
        data = load_image_folder(args.train_folder, clip.image_size)
        if args.val_folder:
            val = load_image_folder(args.val_folder, clip.image_size)
            if val.classnames != data.classnames:
                raise InputError(
                    f"--val-folder classes {list(val.classnames)} differ from --train-folder's "
                    f"{list(data.classnames)}; give folders with the same class sub-directories"
                )
            return data, val, f"--val-folder {args.val_folder}"
        train, val = hold_out(data, args.val_fraction, args.seed)
        source = (
            f"{len(val.labels)} of {len(data.labels)} images of --train-folder held out "
            f"(--val-fraction {args.val_fraction}, seed {args.seed}; not trained on)"
        )
        return train, val, source
    kw = {"config": args.dataset_config, "offline": not args.online}
    train = load_hf_dataset(args.dataset, "train", clip.image_size, **kw)
    val = load_hf_dataset(args.dataset, "validation", clip.image_size, **kw)
    return train, val, f"the validation split of --dataset {args.dataset}"


def _clip_config(args: argparse.Namespace) -> FinetuneConfig:
    """The hf-clip fine-tuning config from the flags (learning rate defaults by LoRA or full)."""
    return FinetuneConfig(
        steps=args.steps,
        batch=args.batch,
        seed=args.seed,
        lora=args.lora,
        lora_rank=8 if args.lora_rank is None else args.lora_rank,
        lr=args.lr if args.lr is not None else (1e-4 if args.lora else 1e-5),
        anchor_weight=args.anchor_weight if args.anchor_weight is not None else 0.0,
    )


def _anchor_images(args: argparse.Namespace, clip: HfClip) -> NDArray[np.uint8] | None:
    """The public anchor images of ``--anchor-folder``, or None; the folder needs a weight."""
    if args.anchor_folder and not args.anchor_weight:
        raise InputError("--anchor-folder is used only with --anchor-weight B > 0; give both")
    return (
        load_image_folder(args.anchor_folder, clip.image_size).images
        if args.anchor_folder
        else None
    )


def finetune_hf_clip(args: argparse.Namespace) -> int:
    """Fine-tune a Hugging Face CLIP's vision tower on one task and write the result."""
    if args.lora_rank is not None and not args.lora:
        raise InputError("--lora-rank sets the rank of --lora; add --lora, or drop --lora-rank")
    if bool(args.train_folder) == bool(args.dataset):
        raise InputError("--family hf-clip needs exactly one of --train-folder or --dataset")
    if args.val_folder and not args.train_folder:
        raise InputError("--val-folder goes with --train-folder; a --dataset brings its own")
    if not 0 < args.val_fraction < 1:
        raise InputError(f"--val-fraction {args.val_fraction} must lie between 0 and 1")
    for flag in ("train_folder", "val_folder", "anchor_folder"):
        folder = getattr(args, flag)
        if folder and not Path(folder).is_dir():
            name = "--" + flag.replace("_", "-")
            raise InputError(
                f"{name} {folder} is not a directory; give an image folder root/<class>/<images>"
            )
    ft_cfg = _clip_config(args)  # bad numbers fail here, before the model loads
    clip = HfClip.from_pretrained(args.base or BASE_IDS["vit-b-16"], offline=not args.online)
    train, val, val_source = _train_and_val(args, clip)
    head = clip.zero_shot_head(train.classnames, tuple(args.templates or DEFAULT_TEMPLATES))
    anchor_images = _anchor_images(args, clip)
    base_state = clip.vision_state()
    before = clip_accuracy(clip, head, val)
    losses = finetune_clip(clip, train, head, ft_cfg, progress=True, anchor_images=anchor_images)
    after = clip_accuracy(clip, head, val)
    record = {
        "family": "hf-clip",
        "base": str(args.base),
        "finetune": ft_cfg.model_dump(),
        "classnames": list(train.classnames),
        "val_accuracy": {"base": before, "finetuned": after},
        "validation": {"source": val_source, "images": len(val.labels)},
        "train_images": len(train.labels),
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }
    mark_output_dir(args.out, "finetune")
    out = write_result(args.out, base_state, clip.vision_state(), record, prefix="vision_model.")
    print(
        f"fine-tuned: validation accuracy {before:.3f} -> {after:.3f} on {len(val.labels)} "
        f"images ({val_source}); wrote {out}"
    )
    return 0


def _is_vision(key: str) -> bool:
    """A key of the vision tower (what enters a task vector)."""
    return "vision_model." in key


def _check_checkpoint(what: str, name: str, found: list[str], missing: list[str]) -> int | None:
    """Find checkpoint ``name`` offline and read its headers; its vision entries, or None."""
    try:
        path = fetch_checkpoint(name, offline=True)
        entries = float_entries(path, _is_vision)
        found.append(f"{what} {name}: {path} ({entries:,} vision entries)")
        return entries
    except (CheckpointError, InputError) as exc:
        missing.append(unreadable(what, name, exc, checkpoint_fix(name)))
        return None


def _check_dataset(task: str, spec: ClipTaskSpec) -> str:
    """Load one example of the task's train and test splits offline (raises when missing)."""
    kw: dict[str, Any] = {
        "config": spec.dataset_config,
        "offline": True,
        "image_key": spec.image_key,
        "label_key": spec.label_key,
        "limit": 1,
    }
    for split in ("train", spec.test_split):
        load_hf_dataset(spec.dataset, split, 32, **kw)
    return f"task {task}'s dataset {spec.dataset}: train and {spec.test_split} load"


def check_pool(cfg: ClipPoolConfig) -> Preflight:
    """The base and every fine-tuned checkpoint found offline with readable headers, and one
    example of each task's train and test splits loadable offline."""
    found: list[str] = []
    missing: list[str] = []
    entries = _check_checkpoint("base", cfg.base, found, missing)
    for task, spec in cfg.tasks.items():
        _check_checkpoint(f"task {task}'s fine-tune", spec.finetuned, found, missing)
        try:
            found.append(_check_dataset(task, spec))
        except (CheckpointError, InputError) as exc:
            fetch = f"python -c \"import datasets; datasets.load_dataset('{spec.dataset}')\""
            fix = (
                "fetch it with: " + fetch
                if not Path(spec.dataset).exists()
                else "re-save it with Dataset.save_to_disk"
            )
            missing.append(unreadable(f"task {task}'s dataset", spec.dataset, exc, fix))
    return Preflight(found, missing, entries)


FAMILY = register_family(
    Family(
        name="hf-clip",
        section="clip",
        config=ClipPoolConfig,
        build=build_pool,
        tasks=lambda cfg: cfg.tasks,
        seconds_per_run=60.0,
        required="family hf-clip needs a 'clip:' section (see configs/)",
        evaluate=hf_clip_scores,
        finetune=finetune_hf_clip,
        check=check_pool,
    )
)
