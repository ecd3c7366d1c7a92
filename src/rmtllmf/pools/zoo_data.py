"""The embedded zoo's data files: each task's splits and the anchor's public images, written
atomically by worker processes (the functions take the config as JSON) and read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from rmtllmf._io import atomic_output
from rmtllmf.data.pretext import pretext
from rmtllmf.data.synthetic import TASKS, make_task
from rmtllmf.pools.base import Split
from rmtllmf.pools.zoo_config import ZooConfig
from rmtllmf.training.loops import Anchor


def make_data(cfg: ZooConfig, task: str) -> dict[str, Split]:
    n_classes = len(TASKS[task][1])
    sizes = {
        "train": cfg.n_train,
        "val": cfg.n_val,
        "test": cfg.n_test,
        "head": cfg.head_per_class * n_classes * 3,
    }
    data = {s: make_task(task, s, n, cfg.seed) for s, n in sizes.items()}
    hx, hy = data["head"]  # keep exactly head_per_class examples of each class
    keep = np.concatenate([np.flatnonzero(hy == c)[: cfg.head_per_class] for c in range(n_classes)])
    data["head"] = (hx[keep], hy[keep])
    return data


def write_data(cfg_json: str, task: str, file: str) -> None:
    """Worker: generate and store one task's splits (written atomically)."""
    splits = make_data(ZooConfig.model_validate_json(cfg_json), task)
    arrays: dict[str, Any] = {}
    for s_name, (x, y) in splits.items():
        arrays[f"{s_name}_x"], arrays[f"{s_name}_y"] = x, y
    with atomic_output(file, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


ANCHOR_STREAM = 200
"""``default_rng([seed, ANCHOR_STREAM])`` draws the anchor images: the pretext distribution the
base was pretrained on (streams 100 and 101), images it has not seen."""


def write_anchor(cfg_json: str, file: str) -> None:
    """Worker: generate and store the anchor's images (written atomically): pretext images, then
    ``anchor_domain_images`` public images of each task's domain; ``domain`` holds each image's
    task index (-1 for pretext)."""
    cfg = ZooConfig.model_validate_json(cfg_json)
    images, _ = pretext(np.random.default_rng([cfg.seed, ANCHOR_STREAM]), cfg.anchor_images)
    parts, domain = [images], [np.full(len(images), -1)]
    if cfg.anchor_domain_images:
        for i, task in enumerate(cfg.tasks):
            public, _ = make_task(task, "public", cfg.anchor_domain_images, cfg.seed)
            parts.append(public)
            domain.append(np.full(len(public), i))
    with atomic_output(file, suffix=".npz") as tmp:
        np.savez(tmp, images=np.concatenate(parts), domain=np.concatenate(domain))


def load_anchor(cfg: ZooConfig, home: Path, task: str | None = None) -> Anchor | None:
    """The anchor of ``task``'s fine-tune: every anchor image but those of its own domain
    (``None`` for plain fine-tuning; ``task=None``: the whole set)."""
    if cfg.anchor_weight == 0:
        return None
    with np.load(home / "data" / "anchor.npz") as z:
        images = z["images"]
        domain = z["domain"]
    targets = load_file(home / "anchor.safetensors")["targets"]
    if task is not None:
        keep = domain != cfg.tasks.index(task)
        images, targets = images[keep], targets[torch.from_numpy(keep)]
    return Anchor(images, targets, cfg.anchor_weight, cfg.anchor_batch)


def write_task_or_anchor(cfg_json: str, task: str, file: str) -> None:
    """Worker: one task's splits, or the anchor images when ``task`` is empty."""
    if task:
        write_data(cfg_json, task, file)
    else:
        write_anchor(cfg_json, file)
