"""Shared fixtures; tests import reference implementations from ``oracles``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20241122)


def make_tiny_base(path: Path) -> Path:
    """A random tiny-vit base checkpoint with its architecture in the metadata."""
    import json

    import torch
    from safetensors.torch import save_file

    from rmtllmf.models.tiny_vit import TinyVit, TinyVitConfig

    cfg = TinyVitConfig(patch_size=8, hidden=16, layers=1, heads=2, mlp=32, embed_dim=8)
    torch.manual_seed(0)
    model = TinyVit(cfg)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        path,
        {"rmtllmf": json.dumps({"config": cfg.model_dump()})},
    )
    return path


def build_tiny_zoo(root: Path, tasks: tuple[str, ...]):
    """A zoo of the tiny random base with a few fine-tuning steps per task (seconds)."""
    from rmtllmf.zoo import ZooConfig, build_zoo

    cfg = ZooConfig(
        tasks=tasks,
        n_train=96,
        n_val=32,
        n_test=48,
        head_per_class=2,
        steps=3,
        batch=16,
        base=str(make_tiny_base(root / "base.safetensors")),
    )
    return build_zoo(root / "zoo", cfg)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """Three tasks of the embedded suite on the tiny random base."""
    return build_tiny_zoo(tmp_path_factory.mktemp("tiny_zoo"), ("signs", "textures", "counting"))
