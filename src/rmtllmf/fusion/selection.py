"""Exact order statistics of task-vector magnitudes, streamed: TIES's global threshold without
holding a task vector in memory.

TIES (Yadav et al. 2023) keeps the entries of ``tau_q`` whose magnitude is at least the
``k``-th smallest of all ``d`` magnitudes of ``tau_q``, ``k = d - floor(d * density)`` (the TIES
reference code and FusionBench's ``topk_values_mask``). ``torch.kthvalue`` over the concatenated
magnitudes needs the whole task vector in float32 at once: 28 GB for a 7B-parameter model.

Here the ``k``-th smallest is found by a two-pass radix select on the float32 bit patterns. A
non-negative float32 ``m`` and its bits ``b`` (read as a signed 32-bit integer) order alike
(``+0 < subnormals < normals < inf < NaN``), so

* pass 1 counts the high 16 bits ``b >> 16`` of every magnitude (65536 bins) and finds the bin
  ``h`` holding the ``k``-th smallest and its rank ``r`` inside that bin;
* pass 2 counts the low 16 bits of the magnitudes whose high bits are ``h`` and finds the ``r``-th
  smallest there, ``l``; the answer is the float whose bits are ``(h << 16) | l``.

The result is the float ``kthvalue`` returns; memory is two 65536-bin histograms per model
plus one slice of one tensor, whatever the model size. Each pass reads every tensor once, so a
streaming TIES merge reads the models three times (two passes here, one to merge).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeAlias

from rmtllmf._lazy import lazy_module

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")


BINS = 1 << 16
SLICE = 1 << 22  # elements per bincount call, so that its int64 copy stays at 32 MiB

MagnitudeStream: TypeAlias = "Callable[[], Iterable[Sequence[torch.Tensor]]]"
"""Called once per pass; yields, parameter by parameter, the ``N`` models' magnitudes
``|tau_q[k]|`` (any shape, any floating dtype). Every call must yield the same values."""


def _bits(magnitudes: torch.Tensor) -> Iterable[torch.Tensor]:
    """The float32 bit patterns of ``magnitudes`` (int32), a slice at a time."""
    flat = magnitudes.detach().reshape(-1).to(torch.float32)
    if bool((flat < 0).any()):
        raise ValueError("magnitudes must be non-negative (|tau|), got a negative entry")
    ints = flat.abs().view(torch.int32)  # abs: -0.0 and a NaN with its sign bit set
    for start in range(0, ints.numel(), SLICE):
        yield ints[start : start + SLICE]


def _locate(histogram: torch.Tensor, rank: int) -> tuple[int, int]:
    """The bin holding the ``rank``-th smallest (1-based) entry, and its rank inside that bin."""
    cumulative = histogram.cumsum(0)
    index = int(torch.searchsorted(cumulative, torch.tensor(rank, dtype=cumulative.dtype)))
    below = int(cumulative[index - 1]) if index > 0 else 0
    return index, rank - below


def kth_smallest_magnitudes(
    stream: MagnitudeStream, n_models: int, ranks: Callable[[int], int]
) -> list[float | None]:
    """For each model ``q``, the ``ranks(d)``-th smallest (1-based) of its ``d`` streamed
    magnitudes, exactly; ``None`` where the rank is outside ``1..d`` (nothing to select)."""
    high = torch.zeros((n_models, BINS), dtype=torch.int64)
    for mags in stream():
        _check_count(mags, n_models)
        for q, m in enumerate(mags):
            for bits in _bits(m):
                high[q] += torch.bincount((bits >> 16).to(torch.int64), minlength=BINS)
    totals = [int(t) for t in high.sum(dim=1)]
    if len(set(totals)) > 1:
        raise ValueError(f"the models' task vectors differ in size: {totals} entries")
    d = totals[0] if totals else 0
    rank = ranks(d)
    if not 1 <= rank <= d:
        return [None] * n_models
    located = [_locate(high[q], rank) for q in range(n_models)]
    low = torch.zeros((n_models, BINS), dtype=torch.int64)
    for mags in stream():
        _check_count(mags, n_models)
        for q, m in enumerate(mags):
            h = located[q][0]
            for bits in _bits(m):
                inside = bits[(bits >> 16) == h]
                if inside.numel():
                    low[q] += torch.bincount((inside & (BINS - 1)).to(torch.int64), minlength=BINS)
    out: list[float | None] = []
    for q, (h, r) in enumerate(located):
        if int(low[q].sum()) != int(high[q, h]):
            raise ValueError("the magnitude stream changed between passes; it must be replayable")
        low_bits, _ = _locate(low[q], r)
        out.append(struct.unpack("<f", struct.pack("<I", (h << 16) | low_bits))[0])
    return out


def _check_count(mags: Sequence[torch.Tensor], n_models: int) -> None:
    if len(mags) != n_models:
        raise ValueError(f"expected the magnitudes of {n_models} models, got {len(mags)}")


def ties_thresholds(stream: MagnitudeStream, n_models: int, density: float) -> tuple[float, ...]:
    """Each model's TIES threshold: the ``(d - floor(d * density))``-th smallest of its ``d``
    magnitudes (so ``floor(d * density) + 1`` entries survive, ties aside), ``0.0`` (keep
    everything) for ``density >= 1`` or an empty task vector."""
    if density >= 1.0:
        return (0.0,) * n_models
    found = kth_smallest_magnitudes(stream, n_models, lambda d: d - int(d * density))
    return tuple(0.0 if t is None else t for t in found)
