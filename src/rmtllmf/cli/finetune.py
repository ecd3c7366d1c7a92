"""``rmtllmf finetune``: fine-tune a Hugging Face CLIP on one task and write its checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from rmtllmf._io import check_output_dir_owner
from rmtllmf.cli.common import check_out_given, check_output_dir, examples, set_threads

FLAGS = {
    name: "--" + name.replace("_", "-")
    for name in ("steps", "batch", "lr", "seed", "lora_rank", "anchor_weight")
}
"""Config field -> the flag that sets it, so errors name what the user typed."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a base model on one task; writes the checkpoint and its task vector",
        description="Fine-tune one user's model on one task and write OUT/model.safetensors, "
        "OUT/task_vector.safetensors and OUT/finetune.json. tiny-vit: one embedded task, "
        "through the embedded zoo's cache (built first if needed; the command says so). "
        "hf-clip: a Hugging Face CLIP's vision tower with zero-shot heads, fully or with LoRA, "
        "on an image folder (validation: --val-folder, or a seeded hold-out of the folder that "
        "is never trained on) or a dataset (its validation split).",
        epilog=examples(
            "rmtllmf finetune --task signs --steps 400 --out ft/signs",
            "rmtllmf finetune --family hf-clip --base openai/clip-vit-base-patch16 "
            "--train-folder data/cars --val-fraction 0.2 --lora --out ft/cars",
        ),
    )
    p.add_argument(
        "--family",
        default="tiny-vit",
        help="model family: a registered family with a finetune hook (built in: tiny-vit, hf-clip)",
    )
    p.add_argument("--task", help="tiny-vit: a task of the embedded suite (required there)")
    p.add_argument(
        "--base",
        default=None,
        help="base model (default: tiny-vit's shipped base; hf-clip: ViT-B/16; "
        "hf-clip: a directory or hub id)",
    )
    p.add_argument(
        "--train-folder", help="hf-clip: image folder root/<class>/<images> (default: none)"
    )
    p.add_argument(
        "--val-folder",
        default=None,
        help="hf-clip: validation image folder with the same classes (default: hold out "
        "--val-fraction of --train-folder)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="hf-clip: share of each class of --train-folder held out for validation (seeded "
        "by --seed, never trained on)",
    )
    p.add_argument(
        "--dataset",
        help="hf-clip: Hugging Face dataset id or save_to_disk directory (default: none)",
    )
    p.add_argument("--dataset-config", default=None, help="hf-clip: the dataset's config name")
    p.add_argument(
        "--templates",
        nargs="+",
        default=None,
        help="zero-shot prompt templates (default: the library's CLIP templates)",
    )
    p.add_argument("--online", action="store_true", help="allow hub downloads (hf-clip)")
    p.add_argument("--steps", type=int, default=200, help="training steps")
    p.add_argument("--batch", type=int, default=32, help="hf-clip: batch size")
    p.add_argument(
        "--lr", type=float, default=None, help="default 1e-5 (full), 1e-4 (LoRA), tiny-vit 1e-3"
    )
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (hf-clip, peft)")
    p.add_argument(
        "--lora-rank", type=int, default=None, help="hf-clip: LoRA rank with --lora (default 8)"
    )
    p.add_argument(
        "--anchor-weight",
        type=float,
        default=None,
        help="beta of the function-space anchor (tiny-vit default 10, hf-clip 0)",
    )
    p.add_argument(
        "--anchor-folder",
        default=None,
        help="hf-clip: public anchor images, an image folder (default: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of training and the hold-out")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--force",
        action="store_true",
        help="write into an --out directory that holds files finetune did not write (its "
        "model.safetensors, task_vector.safetensors and finetune.json replace files of the same "
        "names; nothing else is touched)",
    )


def run(args: argparse.Namespace) -> int:
    """Fine-tune the chosen family's base model on one task; each family has its function."""
    set_threads(args.threads)
    from rmtllmf.app.family_registry import finetune_hook

    check_output_dir(check_out_given(args.out))
    check_output_dir_owner(args.out, "finetune", force=args.force)
    return finetune_hook(args.family)(args)
