"""Shared by the merge tests: a small random base model and fine-tuned models around it."""

from __future__ import annotations

import torch


def random_models(n_tasks=3, seed=0):
    """A base state dict (float32, bfloat16 and an integer buffer) and ``n_tasks`` fine-tuned
    state dicts, each the base plus small noise in its floating-point tensors."""
    g = torch.Generator().manual_seed(seed)
    base = {
        "a.weight": torch.randn(16, 8, generator=g),
        "a.bias": torch.randn(16, generator=g),
        "ids": torch.arange(4),
        "b.weight": torch.randn(4, 16, generator=g).to(torch.bfloat16),
    }
    fts = []
    for _ in range(n_tasks):
        fts.append(
            {
                k: (v.float() + 0.05 * torch.randn(v.shape, generator=g)).to(v.dtype)
                if v.is_floating_point()
                else v.clone()
                for k, v in base.items()
            }
        )
    return base, fts
