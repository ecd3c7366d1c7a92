"""``rmtllmf finetune``: fine-tune a Hugging Face CLIP on one task and write its checkpoint."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rmtllmf.cli.common import default_cache
from rmtllmf.errors import InputError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a base model on one task; writes the checkpoint and its task vector",
    )
    p.add_argument("--family", choices=["tiny-vit", "hf-clip"], default="tiny-vit")
    p.add_argument("--task", help="tiny-vit: a task of the embedded suite")
    p.add_argument("--base", default=None, help="base model (hf-clip: directory or hub id)")
    p.add_argument("--train-folder", help="hf-clip: image folder root/<class>/<images>")
    p.add_argument("--dataset", help="hf-clip: Hugging Face dataset id or save_to_disk directory")
    p.add_argument("--dataset-config", default=None)
    p.add_argument("--templates", nargs="+", default=None, help="zero-shot prompt templates")
    p.add_argument("--online", action="store_true", help="allow hub downloads (hf-clip)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="default 1e-5 (full), 1e-4 (LoRA)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (hf-clip, peft)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument(
        "--anchor-weight",
        type=float,
        default=None,
        help="beta of the function-space anchor (tiny-vit default 10, hf-clip 0)",
    )
    p.add_argument(
        "--anchor-folder", default=None, help="hf-clip: public anchor images (an image folder)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, type=Path, help="output directory")


def run(args: argparse.Namespace) -> int:
    import torch

    from rmtllmf.training.clip import FinetuneConfig, clip_accuracy, finetune_clip, write_result

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.family == "tiny-vit":
        from rmtllmf.pools.tiny_vit import ZooConfig, build_zoo

        if not args.task:
            raise InputError("--family tiny-vit needs --task (one of the embedded tasks)")
        cfg = ZooConfig(
            tasks=(args.task,),
            steps=args.steps,
            seed=args.seed,
            base=args.base,
            **({"lr": args.lr} if args.lr else {}),
            **({"anchor_weight": args.anchor_weight} if args.anchor_weight is not None else {}),
        )
        zoo = build_zoo(default_cache() / "zoo", cfg, progress=True)
        record = {
            "family": "tiny-vit",
            "task": args.task,
            "zoo": cfg.model_dump(),
            "base_accuracy": zoo.record.base[args.task],
            "finetuned_accuracy": zoo.record.finetuned[args.task],
        }
        out = write_result(args.out, zoo.base_state, zoo.finetuned[args.task], record)
        print(
            f"fine-tuned {args.task}: test accuracy {record['base_accuracy']['test']:.3f} -> "
            f"{record['finetuned_accuracy']['test']:.3f}; wrote {out}"
        )
        return 0

    from rmtllmf.data.real import load_hf_dataset, load_image_folder
    from rmtllmf.models.hf_clip import BASE_IDS, DEFAULT_TEMPLATES, HfClip

    if bool(args.train_folder) == bool(args.dataset):
        raise InputError("--family hf-clip needs exactly one of --train-folder or --dataset")
    clip = HfClip.from_pretrained(args.base or BASE_IDS["vit-b-16"], offline=not args.online)
    if args.train_folder:
        train = load_image_folder(args.train_folder, clip.image_size)
        val = train
    else:
        kw = {"config": args.dataset_config, "offline": not args.online}
        train = load_hf_dataset(args.dataset, "train", clip.image_size, **kw)
        val = load_hf_dataset(args.dataset, "validation", clip.image_size, **kw)
    head = clip.zero_shot_head(train.classnames, tuple(args.templates or DEFAULT_TEMPLATES))
    ft_cfg = FinetuneConfig(
        steps=args.steps,
        batch=args.batch,
        seed=args.seed,
        lora=args.lora,
        lora_rank=args.lora_rank,
        lr=args.lr or (1e-4 if args.lora else 1e-5),
        anchor_weight=args.anchor_weight or 0.0,
    )
    if args.anchor_folder and not args.anchor_weight:
        raise InputError("--anchor-folder is used only with --anchor-weight B > 0; give both")
    anchor_images = (
        load_image_folder(args.anchor_folder, clip.image_size).images
        if args.anchor_folder
        else None
    )
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
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }
    out = write_result(args.out, base_state, clip.vision_state(), record, prefix="vision_model.")
    print(f"fine-tuned: validation accuracy {before:.3f} -> {after:.3f}; wrote {out}")
    return 0
