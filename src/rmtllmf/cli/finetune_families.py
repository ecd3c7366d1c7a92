"""``rmtllmf finetune``, one function per model family (tiny-vit, hf-clip).

Imported only when the command runs: it loads torch and the training code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from rmtllmf._io import mark_output_dir
from rmtllmf.cli.common import announce_zoo, check_embedded_tasks, default_cache
from rmtllmf.data.real import LabelledImages, hold_out, load_hf_dataset, load_image_folder
from rmtllmf.errors import InputError
from rmtllmf.models.hf_clip import BASE_IDS, DEFAULT_TEMPLATES, HfClip
from rmtllmf.training.clip import FinetuneConfig, clip_accuracy, finetune_clip, write_result


def finetune_tiny_vit(args: argparse.Namespace) -> int:
    """Fine-tune the tiny base on one embedded task (through the zoo) and write the result."""
    from rmtllmf.pools.tiny_vit_pool import ZooConfig, build_zoo

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
