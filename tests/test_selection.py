"""The streamed radix select of TIES thresholds against torch.kthvalue and numpy.partition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rmtllmf.fusion import selection
from rmtllmf.fusion.selection import kth_smallest_magnitudes, ties_thresholds


def ties_threshold(magnitudes: torch.Tensor, density: float) -> float:
    """One model's TIES threshold from magnitudes held in memory."""
    return ties_thresholds(lambda: [[magnitudes]], 1, density)[0]


magnitudes = arrays(
    np.float32,
    st.integers(1, 300),
    elements=st.one_of(
        st.sampled_from([0.0, 1e-45, 1e-40, 1.0, 1.5, 3e38, np.inf]),  # zero, subnormals, inf
        st.floats(0.0, 1e6, width=32),
    ),
)


@settings(max_examples=120, deadline=None)
@given(
    st.lists(magnitudes, min_size=1, max_size=3),
    st.data(),
)
def test_kth_smallest_equals_kthvalue_of_the_concatenation(models, data):
    """Each model's magnitudes cut into random 'tensors'; any rank; three peers agree."""
    d = min(m.size for m in models)
    models = [m[:d] for m in models]
    cuts = sorted(data.draw(st.lists(st.integers(0, d), max_size=4)))
    bounds = [0, *cuts, d]
    rank = data.draw(st.integers(1, d))

    def stream():
        for a, b in itertools.pairwise(bounds):
            yield [torch.from_numpy(m[a:b].copy()) for m in models]

    got = kth_smallest_magnitudes(stream, len(models), lambda _: rank)
    for m, g in zip(models, got, strict=True):
        assert g == float(torch.from_numpy(m).kthvalue(rank).values)
        assert g == float(np.partition(m, rank - 1)[rank - 1])


def test_ties_threshold_matches_the_definition_on_a_large_vector(monkeypatch):
    """Several bincount slices per tensor (SLICE made small), against kthvalue."""
    monkeypatch.setattr(selection, "SLICE", 1000)
    gen = torch.Generator().manual_seed(0)
    tau = torch.randn(50_003, generator=gen) * torch.rand(50_003, generator=gen) ** 4
    for density in (0.0, 0.01, 0.2, 0.5, 0.999):
        k = tau.numel() - int(tau.numel() * density)
        assert ties_threshold(tau.abs(), density) == float(tau.abs().kthvalue(k).values)


def test_ties_thresholds_keep_everything_at_full_density_or_when_empty():
    x = torch.rand(100)
    assert ties_threshold(x, 1.0) == 0.0
    assert ties_thresholds(lambda: [[torch.empty(0), torch.empty(0)]], 2, 0.2) == (0.0, 0.0)
    assert ties_threshold(x, 0.0) == float(x.max())  # density 0: only the largest survives


def test_bfloat16_and_signed_zero_magnitudes():
    x = torch.tensor([0.5, -0.0, 0.25, 2.0], dtype=torch.bfloat16)
    # sorted: 0, 0.25, 0.5, 2; k = d - floor(d * density)
    assert ties_threshold(x, 0.5) == 0.25  # k = 2
    assert ties_threshold(x, 0.25) == 0.5  # k = 3
    assert ties_threshold(x, 0.9) == 0.0  # k = 1: the signed zero counts as the smallest


def test_bad_streams_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        ties_threshold(torch.tensor([1.0, -2.0]), 0.5)
    with pytest.raises(ValueError, match="differ in size"):
        ties_thresholds(lambda: [[torch.rand(3), torch.rand(4)]], 2, 0.5)
    with pytest.raises(ValueError, match="expected the magnitudes of 2 models"):
        ties_thresholds(lambda: [[torch.rand(3)]], 2, 0.5)
    calls = iter(range(2))

    def changing():
        yield [torch.rand(10) + next(calls)]  # the second pass sees other values

    with pytest.raises(ValueError, match="changed between passes"):
        ties_thresholds(changing, 1, 0.5)


def test_ties_threshold_keeps_the_requested_fraction():
    x = torch.randn(10_000).abs()
    thr = ties_threshold(x, 0.2)
    assert (x >= thr).float().mean().item() == pytest.approx(0.2, abs=1e-3)
    assert ties_threshold(x, 1.0) == 0.0
