"""The merge methods, each one entry of the registry (:mod:`rmtllmf.fusion.method_registry`).

Every method turns the task-vector slices of one parameter, ``[tau_1[k], ..., tau_N[k]]``, into
the merged delta for that parameter; the merged model is ``theta_base[k] + delta[k]``:

* ``task-arithmetic`` (Ilharco et al. 2023; paper eq. 6): ``delta = lambda * sum_q tau_q``.
* ``average``: ``delta = mean_q tau_q``, i.e. the simple average of the fine-tuned weights
  (Wortsman et al. 2022, model soups).
* ``ties`` (Yadav et al. 2023): trim each ``tau_q`` to its ``density`` fraction of largest
  magnitudes (threshold over the whole task vector, as in the paper and FusionBench), elect a sign
  per entry from the sum of the trimmed values (an exact zero takes the majority sign, FusionBench's
  ``resolve_zero_signs``), take the disjoint mean (or sum / max) of the entries that agree with it,
  and scale by ``lambda``.
* per-model weights (``MergeConfig.weights``, mergekit's ``weight``) scale each ``tau_q`` before
  the method; TIES's disjoint mean then divides by the agreeing models' weights.
* ``dare`` (Yu et al. 2024): drop each entry of ``tau_q`` with probability ``p`` and rescale the
  rest by ``1/(1-p)``, then combine with task arithmetic or TIES (``dare_combine``; TIES then
  trims, elects and merges the dropped vectors, its thresholds taken over their magnitudes, as
  in FusionBench's DARE-TIES). Drops are seeded per (task, parameter) and drawn by position in
  blocks of 4096 entries, so a merge is reproducible in any order and a tensor merged in slices
  drops what it would drop whole.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from rmtllmf._lazy import lazy_module
from rmtllmf.fusion.method_registry import (
    MergeConfig,
    TensorContext,
    register,
    stacked_task_vectors,
)

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")


class TiesOptions(BaseModel):
    """TIES's options: the fraction of each task vector's entries kept and the disjoint merge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    density: float = Field(0.2, gt=0.0, le=1.0, description="fraction of entries kept")
    merge: Literal["mean", "sum", "max"] = "mean"


class DareOptions(BaseModel):
    """DARE's options: the drop probability, the combiner and, for TIES, its options."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    drop_rate: float = Field(0.5, ge=0.0, lt=1.0, description="probability p of dropping")
    combine: Literal["task-arithmetic", "ties"] = "task-arithmetic"
    density: float = Field(0.2, gt=0.0, le=1.0, description="TIES combiner: entries kept")
    merge: Literal["mean", "sum", "max"] = "mean"
    seed: int = Field(0, ge=0, lt=2**63, description="seed of the drop masks (mod 2^63 unique)")


@register(
    "task-arithmetic",
    "theta_base + lambda * sum_q tau_q (eq. 6)",
    sliceable=True,
    linear=lambda config, n: [config.scaling] * n,
)
def task_arithmetic(taus: Sequence[torch.Tensor], ctx: TensorContext) -> torch.Tensor:
    """Eq. 6: the merged delta ``lambda_N * sum_q tau_q`` (the drivers add ``theta_base``)."""
    return ctx.config.scaling * torch.stack(list(taus)).sum(dim=0)


@register(
    "average",
    "mean of the fine-tuned weights: theta_base + mean_q tau_q",
    sliceable=True,
    linear=lambda config, n: [1.0 / n] * n,
    scaled=False,
)
def average(taus: Sequence[torch.Tensor], ctx: TensorContext) -> torch.Tensor:
    """``mean_q tau_q``."""
    return torch.stack(list(taus)).mean(dim=0)


def _ties_trim(stacked: torch.Tensor, thresholds: Sequence[float] | None) -> torch.Tensor:
    """Zero the entries of each ``stacked[q]`` below its model's magnitude threshold."""
    if thresholds is None:
        return stacked
    thr = torch.tensor(thresholds, dtype=stacked.dtype).reshape(-1, *([1] * (stacked.dim() - 1)))
    return stacked * (stacked.abs() >= thr)


def ties_combine(
    stacked: torch.Tensor,
    thresholds: Sequence[float] | None,
    merge: str,
    majority: float | None = None,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """TIES trim / elect / disjoint merge of ``stacked`` (shape ``(N, ...)``), unscaled. An entry
    whose elected sum is exactly 0 takes ``majority``, the sign of the sum of the elected signs
    (of ``stacked`` unless given: a slice takes its whole tensor's). With per-model ``weights``
    (``stacked`` already scaled by them) the disjoint mean divides by the weights of the agreeing
    models, ``sum_q w_q tau_q [agree] / sum_q w_q [agree]``, instead of their count."""
    stacked = _ties_trim(stacked, thresholds)
    sign = torch.sign(stacked.sum(dim=0))
    tie_break = torch.sign(sign.sum()) if majority is None else torch.tensor(majority)
    sign = torch.where(sign == 0, tie_break.to(sign.dtype), sign)
    agree = torch.where(sign > 0, stacked > 0, stacked < 0)
    selected = stacked * agree
    if merge == "sum":
        return selected.sum(dim=0)
    if merge == "max":
        return selected.abs().max(dim=0).values * sign
    if weights is not None:
        w = torch.tensor(weights, dtype=stacked.dtype).reshape(-1, *([1] * (stacked.dim() - 1)))
        divisor = (w * agree).sum(dim=0)
        return selected.sum(dim=0) / torch.where(divisor == 0, 1.0, divisor)
    count = agree.sum(dim=0).clamp(min=1)
    return selected.sum(dim=0) / count


def _majority(stacks: Iterable[torch.Tensor], ctx: TensorContext) -> TensorContext:
    """``ctx`` with the majority sign of one parameter: the sign of the sum of the elected signs
    of its trimmed slices (each stacked ``(N, n)``), counted exactly in integers."""
    total = 0
    for stacked in stacks:
        trimmed = _ties_trim(stacked, ctx.thresholds)
        total += int(torch.sign(trimmed.sum(dim=0)).sum())
    return replace(ctx, majority=float((total > 0) - (total < 0)))


def ties_majority(
    slices: Iterable[tuple[int, Sequence[torch.Tensor]]], ctx: TensorContext
) -> TensorContext:
    """TIES's prepass: the majority sign of one parameter from its slices."""
    return _majority((stacked_task_vectors(taus, ctx) for _, taus in slices), ctx)


@register(
    "ties",
    "trim top-density, elect sign, disjoint merge (Yadav et al. 2023)",
    needs_thresholds=lambda c: c.parsed(TiesOptions).density < 1.0,
    sliceable=True,
    prepass=ties_majority,
    options=TiesOptions,
)
def ties(taus: Sequence[torch.Tensor], ctx: TensorContext) -> torch.Tensor:
    """``lambda * disjoint_merge(elect(trim(tau_q)))``."""
    merge = ctx.config.parsed(TiesOptions).merge
    stacked = stacked_task_vectors(taus, ctx)
    combined = ties_combine(stacked, ctx.thresholds, merge, ctx.majority, ctx.config.weights)
    return ctx.config.scaling * combined


DARE_BLOCK = 1 << 12
"""Entries per block of DARE's uniform draws: block ``j`` of a (task, parameter) comes from its
own generator, so a slice's mask depends on its position only, not on how a tensor is cut."""


def _dare_uniforms(n: int, offset: int, seed: int) -> torch.Tensor:
    """Uniforms for flat entries ``offset .. offset + n - 1`` of a (task, parameter)."""
    if n == 0:
        return torch.empty(0)
    first, last = offset // DARE_BLOCK, (offset + n - 1) // DARE_BLOCK
    blocks = [
        torch.rand(
            DARE_BLOCK,
            generator=torch.Generator().manual_seed((seed + j * 0x9E3779B97F4A7C15) % 2**63),
        )
        for j in range(first, last + 1)
    ]
    start = offset - first * DARE_BLOCK
    return torch.cat(blocks)[start : start + n]


def _dare_drop(tau: torch.Tensor, p: float, seed: int, offset: int) -> torch.Tensor:
    """``tau`` with each entry dropped with probability ``p`` and the rest scaled by 1/(1-p)."""
    if p == 0.0:
        return tau
    keep = (_dare_uniforms(tau.numel(), offset, seed) >= p).reshape(tau.shape)
    return tau * keep / (1.0 - p)


def dare_seed(config: MergeConfig, task: int, name: str) -> int:
    """Seed of the drop mask of one (task, parameter): stable across runs and orders."""
    seed = config.parsed(DareOptions).seed
    return (seed * 1_000_003 + task * 7919 + zlib.crc32(name.encode())) % (2**63)


def _dare_dropped(taus: Sequence[torch.Tensor], ctx: TensorContext) -> torch.Tensor:
    """The task vectors' entries at ``ctx.offset`` on, dropped and rescaled, stacked."""
    cfg = ctx.config
    p = cfg.parsed(DareOptions).drop_rate
    return torch.stack(
        [_dare_drop(t, p, dare_seed(cfg, i, ctx.name), ctx.offset) for i, t in enumerate(taus)]
    )


def dare_majority(
    slices: Iterable[tuple[int, Sequence[torch.Tensor]]], ctx: TensorContext
) -> TensorContext:
    """DARE's prepass: with TIES as the combiner, the majority sign of the dropped slices."""
    if ctx.config.parsed(DareOptions).combine != "ties":
        return ctx
    return _majority((_dare_dropped(taus, replace(ctx, offset=o)) for o, taus in slices), ctx)


@register(
    "dare",
    "drop-and-rescale, then task arithmetic or TIES (Yu et al. 2024)",
    needs_thresholds=lambda c: (o := c.parsed(DareOptions)).combine == "ties" and o.density < 1.0,
    sliceable=True,
    prepass=dare_majority,
    vectors=_dare_dropped,
    options=DareOptions,
)
def dare(taus: Sequence[torch.Tensor], ctx: TensorContext) -> torch.Tensor:
    """Drop with probability ``p``, rescale by ``1/(1-p)``, combine."""
    cfg, o = ctx.config, ctx.config.parsed(DareOptions)
    dropped = _dare_dropped(taus, ctx)
    if o.combine == "ties":
        combined = ties_combine(dropped, ctx.thresholds, o.merge, ctx.majority, cfg.weights)
        return cfg.scaling * combined
    return cfg.scaling * dropped.sum(dim=0)
