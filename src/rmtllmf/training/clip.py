"""Fine-tuning one task for a user: full fine-tuning or LoRA, against the task's fixed head.

The result is a checkpoint and its task vector (eq. 1), written as safetensors with the resolved
config beside them:

* ``model.safetensors``: the fine-tuned weights that enter task vectors (hf-clip: the vision
  tower with ``vision_model.`` keys, the layout of FusionBench's checkpoints; tiny-vit: the whole
  model);
* ``task_vector.safetensors``: ``theta_ft - theta_base`` over floating-point parameters;
* ``finetune.json``: config, seed, losses and accuracies.

With ``lora=True`` (hf-clip) only low-rank adapters on the attention projections train (``peft``);
they are merged into the weights afterwards, so the task vector is the merged LoRA delta.

With ``anchor_weight > 0`` the fine-tune also keeps the base's normalised embeddings on a set of
public anchor images (:class:`rmtllmf.training.loops.Anchor`), which makes task vectors
interfere less when they are merged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from rmtllmf._io import write_text_atomic
from rmtllmf.data.real import LabelledImages
from rmtllmf.errors import InputError
from rmtllmf.fusion import TaskVector, save_state_dict
from rmtllmf.models.hf_clip import HfClip
from rmtllmf.models.tiny_vit import PrototypeHead
from rmtllmf.training.loops import Anchor, accuracy, finetune


class FinetuneConfig(BaseModel):
    """Optimisation settings of one fine-tune (frozen)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    steps: int = Field(200, ge=1)
    batch: int = Field(32, ge=1)
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    seed: int = 0
    lora: bool = False
    lora_rank: int = Field(8, ge=1)
    lora_alpha: int = Field(16, gt=0)
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    anchor_weight: float = Field(
        0.0, ge=0, description="beta of the function-space anchor (0: plain fine-tuning)"
    )
    anchor_batch: int = Field(32, ge=1, description="anchor images per step")


def finetune_clip(
    clip: HfClip,
    train: LabelledImages,
    head: PrototypeHead,
    cfg: FinetuneConfig,
    *,
    progress: bool = False,
    anchor_images: NDArray[np.uint8] | None = None,
) -> list[float]:
    """Fine-tune ``clip``'s image path in place against ``head``, anchored on ``anchor_images``
    when ``cfg.anchor_weight > 0``; returns the losses."""
    torch.manual_seed(cfg.seed)
    anchor = None
    if cfg.anchor_weight > 0:
        if anchor_images is None or len(anchor_images) == 0:
            raise InputError(
                "anchor_weight > 0 needs anchor images: give a folder of public images "
                "(--anchor-folder DIR), or set --anchor-weight 0"
            )
        anchor = Anchor.from_base(
            clip.image_encoder(),
            anchor_images,
            cfg.anchor_weight,
            cfg.anchor_batch,
            clip.preprocess,
        )
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            target_modules=list(cfg.lora_targets),
            lora_dropout=0.0,
        )
        wrapped = get_peft_model(clip.model.vision_model, lora)
        clip.model.vision_model = wrapped
        for p in clip.model.visual_projection.parameters():
            p.requires_grad_(False)
    encoder = clip.image_encoder()
    losses = finetune(
        encoder,
        head,
        train.images,
        train.labels,
        steps=cfg.steps,
        batch=cfg.batch,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        progress=progress,
        preprocess=clip.preprocess,
        anchor=anchor,
    )
    if cfg.lora:
        clip.model.vision_model = clip.model.vision_model.merge_and_unload()
        for p in clip.model.visual_projection.parameters():
            p.requires_grad_(True)
    return losses


def write_result(
    out: str | Path,
    base_state: dict[str, torch.Tensor],
    tuned_state: dict[str, torch.Tensor],
    record: dict[str, Any],
    prefix: str = "",
) -> Path:
    """Write ``model.safetensors``, ``task_vector.safetensors`` and ``finetune.json`` to ``out``."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    save_state_dict({prefix + k: v for k, v in tuned_state.items()}, root / "model.safetensors")
    TaskVector.from_models(base_state, tuned_state).save(root / "task_vector.safetensors")
    record = {**record, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_text_atomic(root / "finetune.json", json.dumps(record, indent=2))
    return root


def clip_accuracy(clip: HfClip, head: PrototypeHead, data: LabelledImages) -> float:
    """Accuracy of ``clip`` with ``head`` on ``data``."""
    return accuracy(
        clip.image_encoder(), head, data.images, data.labels, preprocess=clip.preprocess
    )
