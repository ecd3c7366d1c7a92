"""Pretraining the embedded tiny base on the pretext (:func:`rmtllmf.data.pretext.pretext`).

The base learns the factors of variation of the embedded tasks (glyphs, shapes, textures,
colours, counts, rotation, size) from label sets disjoint from the tasks'. The checkpoint is
written as soon as training ends, with the configuration and seed in its metadata; the held-out
accuracy per factor of a linear probe on the frozen embeddings is added afterwards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file

from rmtllmf._io import atomic_output, write_text_atomic
from rmtllmf.data.pretext import PRETEXT_HEADS, pretext
from rmtllmf.models.tiny_vit import TinyVit, TinyVitConfig
from rmtllmf.training.loops import embed, pretrain

#: 0.8M parameters, ~15M multiply-adds per image: the whole study must run on 2 CPU cores
DEFAULT_MODEL = TinyVitConfig(patch_size=8, hidden=128, layers=4, heads=4, mlp=512, embed_dim=128)


class PretrainConfig(BaseModel):
    """How the tiny base is pretrained (frozen; part of every cache key that depends on it)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: TinyVitConfig = DEFAULT_MODEL
    images: int = Field(240_000, ge=16)
    held_out: int = Field(4000, ge=16)
    steps: int = Field(15_000, ge=1)
    batch: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    glyph_weight: float = Field(3.0, gt=0, description="loss weight of the glyph head")
    seed: int = 0


def save_base(model: TinyVit, meta: dict[str, Any], out: Path) -> None:
    """Write the checkpoint (record in its metadata) and the same record as JSON beside it."""
    with atomic_output(out) as tmp:
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            tmp,
            {"format": "pt", "rmtllmf": json.dumps(meta)},
        )
    write_text_atomic(out.with_suffix(".json"), json.dumps(meta, indent=2))


def probe_accuracy(
    model: TinyVit,
    train: tuple[NDArray[np.uint8], NDArray[np.int64]],
    test: tuple[NDArray[np.uint8], NDArray[np.int64]],
    steps: int = 200,
) -> dict[str, float]:
    """Held-out accuracy per pretext factor of a linear probe on frozen embeddings."""
    z_tr, z_te = embed(model, train[0]).clone(), embed(model, test[0]).clone()
    out = {}
    for j, (name, k) in enumerate(PRETEXT_HEADS.items()):
        probe = torch.nn.Linear(z_tr.shape[1], k)
        opt = torch.optim.Adam(probe.parameters(), 1e-2)
        y = torch.from_numpy(train[1][:, j])
        for _ in range(steps):
            loss = F.cross_entropy(probe(z_tr), y)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        with torch.no_grad():
            out[name] = float((probe(z_te).argmax(1).numpy() == test[1][:, j]).mean())
    return out


def pretrain_tiny_base(
    out: str | Path, cfg: PretrainConfig, *, progress: bool = False
) -> dict[str, Any]:
    """Pretrain a tiny base with ``cfg``, write it to ``out`` and return its record."""
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    images, labels = pretext(np.random.default_rng([cfg.seed, 100]), cfg.images)
    test = pretext(np.random.default_rng([cfg.seed, 101]), cfg.held_out)
    generate_s = time.perf_counter() - t0
    model = TinyVit(cfg.model)
    weights = [cfg.glyph_weight if name == "glyph" else 1.0 for name in PRETEXT_HEADS]
    t1 = time.perf_counter()
    losses = pretrain(
        model,
        images,
        labels,
        list(PRETEXT_HEADS.values()),
        steps=cfg.steps,
        batch=cfg.batch,
        lr=cfg.lr,
        loss_weights=weights,
        seed=cfg.seed,
        progress=progress,
    )
    meta: dict[str, Any] = {
        "config": cfg.model.model_dump(),
        "pretrain": cfg.model_dump(),
        "generate_seconds": generate_s,
        "train_seconds": time.perf_counter() - t1,
        "final_loss": float(np.mean(losses[-50:])),
    }
    path = Path(out)
    save_base(model, meta, path)  # first, so that nothing after training can lose it
    n_probe = min(20_000, cfg.images)
    meta["pretext_probe_accuracy"] = probe_accuracy(
        model, (images[:n_probe], labels[:n_probe]), test
    )
    save_base(model, meta, path)
    return meta
