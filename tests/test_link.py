"""Sending vectors: statistical link statistics and symbol link bookkeeping."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import random_channel
from rmtllmf.channel import (
    PAPER_SIGNAL_POWER,
    ChannelRealization,
    LargeScale,
    ScenarioConfig,
    SymbolLinkConfig,
    draw_large_scale,
    draw_realization,
    ideal_noise,
    realize,
    snr_reference_power,
    transmit_statistical,
    transmit_symbols,
)
from rmtllmf.channel.quantize import fit_quantizer
from rmtllmf.errors import InputError


def test_absolute_noise_has_variance_mu(rng):
    x = [np.zeros(200_000, np.float32), np.ones(200_000, np.float32)]
    out = transmit_statistical(x, [0.013, 0.21], rng)
    assert np.var(out[0]) == pytest.approx(0.013, rel=0.02)
    assert np.var(out[1] - 1) == pytest.approx(0.21, rel=0.02)


def test_relative_noise_scales_with_each_segment_power(rng):
    x = np.concatenate([rng.standard_normal(100_000) * 0.01, rng.standard_normal(100_000) * 3.0])
    x = x.astype(np.float32)
    seg = [0, 100_000, 200_000]
    (out,) = transmit_statistical([x], [0.1], rng, scale="relative", segments=[seg])
    noise = out.astype(np.float64) - x
    for a, b in itertools.pairwise(seg):
        power = np.mean(x[a:b].astype(np.float64) ** 2)
        assert np.var(noise[a:b]) == pytest.approx(0.1 * power, rel=0.03)


def test_snr_reference_power_is_the_papers_ideal_pair():
    # -16.2 dB at mu = 0.013: S = 0.013 * 10**-1.62, computed by hand
    assert snr_reference_power() == pytest.approx(3.1186e-4, rel=1e-4)
    assert snr_reference_power() == PAPER_SIGNAL_POWER
    assert snr_reference_power(0.0, 0.5) == pytest.approx(0.5)
    with pytest.raises(InputError, match="MSE > 0"):
        snr_reference_power(-16.2, 0.0)


@settings(max_examples=20, deadline=None)
@given(
    scale=st.floats(1e-4, 1e2),
    mu=st.floats(1e-3, 1.0),
    s_ref=st.floats(1e-5, 1e-1),
)
def test_snr_link_gives_every_entry_the_papers_snr(scale, mu, s_ref):
    """Per-entry SNR E[tau^2] / var(noise) equals S_ref / mu whatever the vector's scale."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(50_000) * scale).astype(np.float32)
    (out,) = transmit_statistical([x], [mu], rng, scale="snr", reference_power=s_ref)
    noise = out.astype(np.float64) - x
    power = np.mean(x.astype(np.float64) ** 2)
    assert power / np.var(noise) == pytest.approx(s_ref / mu, rel=0.05)


def test_snr_link_on_entries_of_the_reference_power_is_the_absolute_link(rng):
    x = rng.standard_normal(200_000)
    x = (x / np.sqrt(np.mean(x**2)) * np.sqrt(PAPER_SIGNAL_POWER)).astype(np.float32)
    (out,) = transmit_statistical([x], [0.21], rng, scale="snr")
    assert np.var(out.astype(np.float64) - x) == pytest.approx(0.21, rel=0.02)


def test_snr_link_per_segment_scales_each_tensor(rng):
    x = np.concatenate([rng.standard_normal(100_000) * 0.01, rng.standard_normal(100_000) * 3.0])
    x = x.astype(np.float32)
    seg = [0, 100_000, 200_000]
    whole = np.mean(x.astype(np.float64) ** 2)
    (out,) = transmit_statistical(
        [x], [0.1], rng, scale="snr", segments=[seg], reference_power=0.5, per_segment=True
    )
    (flat,) = transmit_statistical([x], [0.1], rng, scale="snr", reference_power=0.5)
    for a, b in itertools.pairwise(seg):
        power = np.mean(x[a:b].astype(np.float64) ** 2)
        assert np.var(out[a:b].astype(np.float64) - x[a:b]) == pytest.approx(
            0.1 * power / 0.5, rel=0.03
        )
        assert np.var(flat[a:b].astype(np.float64) - x[a:b]) == pytest.approx(
            0.1 * whole / 0.5, rel=0.03
        )


def test_statistical_link_rejects_bad_input(rng):
    with pytest.raises(InputError, match="one entry per vector"):
        transmit_statistical([np.zeros(3)], [0.1, 0.2], rng)
    with pytest.raises(InputError, match="NaN"):
        transmit_statistical([np.array([np.nan])], [0.1], rng)
    with pytest.raises(InputError, match="noise scale"):
        transmit_statistical([np.zeros(3)], [0.1], rng, scale="weird")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="reference_power"):
        transmit_statistical([np.zeros(3)], [0.1], rng, scale="snr", reference_power=0.0)


def _noiseless(n_rx, n_users, rng):
    H = random_channel(rng, n_rx, n_users)
    return ChannelRealization(
        H,
        np.ones(n_users),
        np.zeros((n_rx, n_rx), complex),
        0.0,
        0.0,
        LargeScale(np.zeros(0), np.zeros(0)),
    )


def test_noiseless_link_returns_the_quantised_vectors(rng):
    """Different lengths, several tensors each: only quantisation error remains."""
    lengths = [1000, 777, 1]
    vectors = [rng.standard_normal(n).astype(np.float32) for n in lengths]
    segments = [[0, 10, 500, 1000], [0, 777], None]
    result = transmit_symbols(
        vectors,
        _noiseless(4, 3, rng),
        SymbolLinkConfig(bits=6, chunk_symbols=64),
        rng,
        segments=segments,
    )
    for x, y, seg, stats in zip(vectors, result.received, segments, result.stats, strict=True):
        q = fit_quantizer(x, 6, seg)
        np.testing.assert_array_equal(y, q.decode(q.encode(x)))
        assert stats.ber == 0.0


def test_results_do_not_depend_on_worker_count():
    cfg = ScenarioConfig(n_users=3, n_antennas=4)
    channel = draw_realization(cfg, np.random.default_rng(0))
    vectors = [np.random.default_rng(q).standard_normal(5000).astype(np.float32) for q in range(3)]
    runs = [
        transmit_symbols(
            vectors,
            channel,
            SymbolLinkConfig(workers=w, chunk_symbols=256),
            np.random.default_rng(5),
        )
        for w in (1, 2)
    ]
    for a, b in zip(runs[0].received, runs[1].received, strict=True):
        np.testing.assert_array_equal(a, b)


def test_block_fading_needs_a_redraw_function_and_tracks_theory():
    cfg = ScenarioConfig(n_users=4, n_antennas=8)
    rng = np.random.default_rng(4)
    large = draw_large_scale(cfg, rng)
    channel = realize(cfg, large, rng)
    vectors = [rng.uniform(-1, 1, 40_000).astype(np.float32) for _ in range(4)]
    link = SymbolLinkConfig(coherence_symbols=1000, genie=True)
    with pytest.raises(InputError, match="redraw"):
        transmit_symbols(vectors, channel, link, rng)
    result = transmit_symbols(vectors, channel, link, rng, redraw=lambda g: realize(cfg, large, g))
    for s in result.stats:
        assert s.symbol_mse == pytest.approx(s.mse_theory, rel=0.08)


def test_symbol_link_rejects_bad_input(rng):
    channel = _noiseless(2, 2, rng)
    with pytest.raises(InputError, match="one per user"):
        transmit_symbols([np.zeros(4, np.float32)], channel, SymbolLinkConfig(), rng)
    with pytest.raises(InputError, match="NaN or Inf"):
        transmit_symbols(
            [np.zeros(4, np.float32), np.array([np.inf], np.float32)],
            channel,
            SymbolLinkConfig(),
            rng,
        )
    with pytest.raises(InputError, match="flat float"):
        transmit_symbols([np.zeros((2, 2)), np.zeros(4)], channel, SymbolLinkConfig(), rng)
    with pytest.raises(ValueError, match="modulation_order"):  # pydantic names the field
        SymbolLinkConfig(modulation_order=32)  # type: ignore[arg-type]


def test_ideal_helper_is_scaled_identity():
    np.testing.assert_array_equal(ideal_noise(3, 2.0), 2.0 * np.eye(3))
