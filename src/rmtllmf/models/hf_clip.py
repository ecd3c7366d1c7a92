"""``hf-clip``: Hugging Face CLIP with zero-shot classification heads (the paper's model).

* Images go through the vision tower and ``visual_projection``; task vectors and merges cover
  the vision tower only (FusionBench's protocol: the text tower and projections stay at the base).
* A task's head is fixed and built from its class names through the *text* tower:
  ``w_c = normalise(mean_t normalise(text(template_t(c))))``, logits
  ``exp(logit_scale) * <normalise(image embedding), w_c>``. The BS builds the same heads from
  the base model, so heads never travel.
* Checkpoints: a full ``CLIPModel`` (keys ``vision_model.*``), a ``CLIPVisionModel`` saved by
  transformers < 5 (``vision_model.*``) or >= 5 (no prefix), as a directory, a safetensors file or a
  state dict. :func:`vision_state` maps all of them onto one canonical key set: the keys of
  ``CLIPModel.vision_model.state_dict()`` (e.g. ``embeddings.patch_embedding.weight``).
* Default ids are FusionBench's public checkpoints; ``offline=True`` never touches the network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from rmtllmf.errors import CheckpointError, InputError, hub_unavailable
from rmtllmf.fusion.checkpoint import load_state_dict
from rmtllmf.models.tiny_vit import PrototypeHead

EMBEDDING_PARAMS = (
    "embeddings.patch_embedding.weight",
    "embeddings.class_embedding",
    "embeddings.position_embedding.weight",
)
BASE_IDS = {"vit-b-16": "openai/clip-vit-base-patch16", "vit-b-32": "openai/clip-vit-base-patch32"}
PAPER_TASKS = ("sun397", "stanford-cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "an image of a {}.")


def finetuned_id(arch: str, task: str) -> str:
    """FusionBench's public fine-tuned checkpoint id (``tanganke/clip-vit-base-patch16_mnist``)."""
    if arch not in BASE_IDS:
        raise InputError(f"unknown CLIP architecture {arch!r}; use one of {sorted(BASE_IDS)}")
    return f"tanganke/{BASE_IDS[arch].split('/')[1]}_{task}"


def vision_state(source: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The canonical vision-tower state dict of any CLIP checkpoint flavour (see module docs)."""
    state = load_state_dict(source) if not isinstance(source, Mapping) else dict(source)
    prefixed = {
        k[len("vision_model.") :]: v for k, v in state.items() if k.startswith("vision_model.")
    }
    if prefixed:
        return prefixed
    bare = {
        k: v
        for k, v in state.items()
        if k.startswith(("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm."))
    }
    if not bare:
        raise CheckpointError(
            "no CLIP vision-tower tensors found (expected keys starting with 'vision_model.' or "
            "'embeddings.'); is this a CLIP checkpoint?"
        )
    return bare


class ClipImageEncoder(torch.nn.Module):
    """``visual_projection(vision_model(x).pooler_output)`` over a CLIPModel's own modules."""

    def __init__(self, clip_model: Any) -> None:
        super().__init__()
        self.vision_model = clip_model.vision_model
        self.visual_projection = clip_model.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return self.visual_projection(pooled)


class HfClip:
    """A CLIP model with its tokenizer; encodes images and builds zero-shot heads."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = int(model.config.vision_config.image_size)

    @classmethod
    def from_pretrained(cls, name: str | Path, *, offline: bool = True) -> HfClip:
        """Load a ``CLIPModel`` and its tokenizer from a directory or hub id.

        ``offline=True`` (the default) uses local files only and fails with a clear error
        instead of downloading.
        """
        from transformers import AutoTokenizer, CLIPModel

        try:
            model = CLIPModel.from_pretrained(str(name), local_files_only=offline)
            tokenizer = AutoTokenizer.from_pretrained(str(name), local_files_only=offline)
        except OSError as exc:
            if Path(name).is_dir():
                raise CheckpointError(f"cannot load the CLIP model in {name}: {exc}") from exc
            raise CheckpointError(
                hub_unavailable("CLIP model", name, exc, offline=offline)
            ) from exc
        return cls(model, tokenizer)

    # parameters ------------------------------------------------------------------------------
    def vision_state(self) -> dict[str, torch.Tensor]:
        """A copy of the vision tower's parameters (canonical keys)."""
        return {k: v.detach().clone() for k, v in self.model.vision_model.state_dict().items()}

    def load_vision_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load canonical vision parameters (strict: every key must match)."""
        own = self.model.vision_model.state_dict()
        missing = [k for k in own if k not in state and own[k].is_floating_point()]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise CheckpointError(
                f"vision state does not fit this CLIP: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}"
            )
        merged = {k: state.get(k, v) for k, v in own.items()}
        self.model.vision_model.load_state_dict(merged)

    # inference -------------------------------------------------------------------------------
    def preprocess(self, images: NDArray[np.uint8] | torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` to CLIP-normalised ``(B, 3, S, S)`` (bicubic resize to ``S``)."""
        batch = torch.from_numpy(images) if isinstance(images, np.ndarray) else images
        x = batch.permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False
            ).clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def image_encoder(self) -> torch.nn.Module:
        """The trainable image path (vision tower + projection) as one module."""
        return ClipImageEncoder(self.model)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image embeddings: vision tower, pooled output, ``visual_projection``."""
        pooled = self.model.vision_model(pixel_values=pixel_values).pooler_output
        return self.model.visual_projection(pooled)

    def __call__(self, normalised: torch.Tensor) -> torch.Tensor:
        """Encoder interface used by :mod:`rmtllmf.training.loops` (input already preprocessed)."""
        return self.encode_images(normalised)

    @torch.inference_mode()
    def zero_shot_head(
        self, classnames: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
    ) -> PrototypeHead:
        """The fixed head ``w_c = normalise(mean_t normalise(text(template_t(c))))``."""
        if not classnames:
            raise InputError("a zero-shot head needs at least one class name")
        rows = []
        for name in classnames:
            tokens = self.tokenizer(
                [t.format(name) for t in templates],
                padding=True,
                truncation=True,
                return_tensors="pt",
            )
            out = self.model.text_model(
                input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask")
            )
            emb = F.normalize(self.model.text_projection(out.pooler_output), dim=-1)
            rows.append(F.normalize(emb.mean(0), dim=0))
        scale = float(self.model.logit_scale.exp())
        return PrototypeHead(torch.stack(rows), scale=scale)

    @torch.inference_mode()
    def accuracy(
        self,
        head: PrototypeHead,
        images: NDArray[np.uint8],
        labels: NDArray[np.int64],
        batch: int = 64,
    ) -> float:
        """Top-1 accuracy of ``head`` on raw uint8 images."""
        if head.n_classes <= int(labels.max(initial=0)):
            raise InputError(
                f"labels go up to {int(labels.max())} but the head has {head.n_classes} classes; "
                "the class names and the dataset disagree"
            )
        correct = 0
        for i in range(0, len(images), batch):
            logits = head(self.encode_images(self.preprocess(images[i : i + batch])))
            correct += int((logits.argmax(-1).numpy() == labels[i : i + batch]).sum())
        return correct / max(len(images), 1)
