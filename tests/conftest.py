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
