"""``tiny-vit``: a small vision transformer shaped like CLIP's vision tower.

Patch embedding (a stride-``p`` convolution without bias), a class token and learned position
embeddings, a pre-LayerNorm, ``L`` pre-LN transformer blocks (multi-head self-attention and a
quick-GELU MLP), a post-LayerNorm on the class token and a linear projection to the embedding
space. Parameter names follow Hugging Face's ``CLIPVisionModel`` + ``visual_projection``, so the
embedding parameters the R-MTLLMF defense re-loads are named as in CLIP:
``embeddings.patch_embedding.weight``, ``embeddings.class_embedding``,
``embeddings.position_embedding.weight``.

**Heads.** As with CLIP's zero-shot heads, a task's classifier is fixed and not part of any task
vector: logits are ``scale * <normalise(f(x)), w_c>`` with unit rows ``w_c`` derived from the
*base* model's embeddings of a fixed, seeded set of labelled "head" examples per class, either
the normalised class prototypes or a cosine linear probe fitted on them
(:func:`rmtllmf.training.loops.probe_head`). Anyone holding the base model and those
examples — the base station included — derives the same head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

EMBEDDING_PARAMS = (
    "embeddings.patch_embedding.weight",
    "embeddings.class_embedding",
    "embeddings.position_embedding.weight",
)


class TinyVitConfig(BaseModel):
    """Architecture of the tiny CLIP-shaped ViT (frozen)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int = Field(32, ge=8)
    patch_size: int = Field(4, ge=1)
    hidden: int = Field(128, ge=8)
    layers: int = Field(6, ge=1)
    heads: int = Field(4, ge=1)
    mlp: int = Field(512, ge=8)
    embed_dim: int = Field(128, ge=8)

    @property
    def n_patches(self) -> int:
        """Number of patch tokens."""
        return (self.image_size // self.patch_size) ** 2


class _Attention(nn.Module):
    def __init__(self, cfg: TinyVitConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.q_proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.k_proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.v_proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.out_proj = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class _Mlp(nn.Module):
    def __init__(self, cfg: TinyVitConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden, cfg.mlp)
        self.fc2 = nn.Linear(cfg.mlp, cfg.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # CLIP's quick-GELU


class _Block(nn.Module):
    def __init__(self, cfg: TinyVitConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden)
        self.self_attn = _Attention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden)
        self.mlp = _Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, cfg: TinyVitConfig) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, cfg.hidden, cfg.patch_size, cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(cfg.hidden) * cfg.hidden**-0.5)
        self.position_embedding = nn.Embedding(cfg.n_patches + 1, cfg.hidden)
        nn.init.normal_(self.position_embedding.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight[None]


class _Encoder(nn.Module):
    def __init__(self, cfg: TinyVitConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Block(cfg) for _ in range(cfg.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class TinyVit(nn.Module):
    """Image batch ``(B, 3, H, W)`` (normalised) to embeddings ``(B, embed_dim)``."""

    def __init__(self, cfg: TinyVitConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = _Embeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden)
        self.encoder = _Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden)
        self.visual_projection = nn.Linear(cfg.hidden, cfg.embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.pre_layrnorm(self.embeddings(x)))
        return self.visual_projection(self.post_layernorm(h[:, 0]))


class PrototypeHead(nn.Module):
    """Fixed classifier: ``logits = scale * normalise(z) @ W^T`` with unit-norm rows ``W``."""

    weight: torch.Tensor

    def __init__(self, weight: torch.Tensor, scale: float = 30.0) -> None:
        super().__init__()
        with torch.inference_mode(False):  # a head built under inference mode must still train
            rows = F.normalize(weight.detach().float().clone(), dim=-1)
        self.register_buffer("weight", rows)
        self.scale = scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(z, dim=-1) @ self.weight.T

    @property
    def n_classes(self) -> int:
        """Number of classes (rows)."""
        return int(self.weight.shape[0])


def normalise_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` to float ``(B, 3, H, W)`` with per-channel standardisation."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.25
