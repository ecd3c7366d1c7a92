"""``rmtllmf finetune``: fine-tune a Hugging Face CLIP on one task and write its checkpoint."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


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
    """Fine-tune the chosen family's base model on one task; each family has its function."""
    import torch

    from rmtllmf.cli.finetune_families import finetune_hf_clip, finetune_tiny_vit

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.family == "tiny-vit":
        return finetune_tiny_vit(args)
    return finetune_hf_clip(args)
