"""MMSE-SIC detection: reduced form against brute force, MSE and BER against theory."""

from __future__ import annotations

import numpy as np
import pytest

from oracles import brute_force_sic_detect, random_channel
from rmtllmf.channel import (
    ChannelRealization,
    LargeScale,
    QamConstellation,
    SymbolLinkConfig,
    ideal_noise,
    qam_ber_awgn,
    transmit_symbols,
    user_mse,
    worst_case_strongest_user_noise,
    worst_case_sum_rate_noise,
)
from rmtllmf.channel.detector import build_sic_receiver, draw_projected_noise, sic_detect


def _realization(H, p, C):
    return ChannelRealization(H, p, C, 0.0, 0.0, LargeScale(np.zeros(0), np.zeros(0)))


def _cn(rng, *shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2)


def test_reduced_detection_equals_full_dimensional_sic(rng):
    """Projecting the N_R-dim noise on the filters gives the same decisions as brute force."""
    H = random_channel(rng, 6, 3) * np.array([1.0, 2.0, 3.0])
    p = np.ones(3)
    C = worst_case_sum_rate_noise(H, p, 0.5, 0.02)
    const = QamConstellation(16)
    n = 3000
    symbols = rng.integers(0, 16, size=(3, n))
    z = np.linalg.cholesky(C) @ _cn(rng, 6, n)
    expected = brute_force_sic_detect(H, p, C, symbols, z, const.points.astype(complex))
    rx = build_sic_receiver(H, p, C)
    noise = (rx.filters.conj().T @ z).astype(np.complex64)
    decided, _ = sic_detect(rx, const.points[symbols[rx.order]], noise, const)
    ours = np.empty_like(decided)
    ours[rx.order] = decided
    assert np.mean(ours != expected) < 1e-3  # complex64 vs float64: rare flips at boundaries
    assert 0.005 < np.mean(expected != symbols) < 0.5  # the comparison is not trivial


@pytest.mark.parametrize("jammer", [worst_case_sum_rate_noise, worst_case_strongest_user_noise])
def test_projected_noise_keeps_the_cross_user_correlation(rng, jammer):
    """e = W^H z must have covariance W^H C_z W, off-diagonal (shared-noise) terms included."""
    H = random_channel(rng, 4, 4)  # N_R = Q: the filters cannot null the jammer
    p = np.ones(4)
    C = jammer(H, p, 4.0, 0.1)
    rx = build_sic_receiver(H, p, C)
    e = draw_projected_noise(rx, 200_000, rng).astype(np.complex128)
    target = rx.filters.conj().T @ C @ rx.filters
    empirical = e @ e.conj().T / e.shape[1]
    d_t = np.sqrt(np.real(np.diag(target)))
    d_e = np.sqrt(np.real(np.diag(empirical)))
    np.testing.assert_allclose(d_e, d_t, rtol=0.01)
    corr_t = target / np.outer(d_t, d_t)
    np.testing.assert_allclose(empirical / np.outer(d_e, d_e), corr_t, atol=0.012)
    assert np.abs(corr_t - np.eye(4)).max() > 0.2  # the users' errors really are correlated


@pytest.mark.parametrize("scenario", ["ideal", "sum-rate", "strongest-user"])
def test_genie_mmse_estimate_mse_matches_eq5(rng, scenario):
    H = random_channel(rng, 16, 8) * np.linspace(0.5, 1.5, 8)
    p = np.ones(8)
    noises = {
        "ideal": ideal_noise(16, 0.05),
        "sum-rate": worst_case_sum_rate_noise(H, p, 1.0, 0.05),
        "strongest-user": worst_case_strongest_user_noise(H, p, 1.0, 0.05),
    }
    C = noises[scenario]
    vectors = [rng.uniform(-1, 1, 60_000).astype(np.float32) for _ in range(8)]
    result = transmit_symbols(
        vectors, _realization(H, p, C), SymbolLinkConfig(genie=True), np.random.default_rng(1)
    )
    measured = np.array([s.symbol_mse for s in result.stats])
    np.testing.assert_allclose(measured, user_mse(H, p, C), rtol=0.03)


def test_decision_feedback_propagates_errors(rng):
    H = random_channel(rng, 4, 4)
    p = np.ones(4)
    C = ideal_noise(4, 0.08)
    vectors = [rng.uniform(-1, 1, 30_000).astype(np.float32) for _ in range(4)]
    channel = _realization(H, p, C)
    genie = transmit_symbols(
        vectors, channel, SymbolLinkConfig(genie=True), np.random.default_rng(2)
    )
    df = transmit_symbols(vectors, channel, SymbolLinkConfig(genie=False), np.random.default_rng(2))
    first = build_sic_receiver(H, p, C).order[0]
    # the first decoded user is identical (nothing to cancel yet); later ones can only suffer
    assert df.stats[first].ber == genie.stats[first].ber
    assert sum(s.ber for s in df.stats) > sum(s.ber for s in genie.stats)


@pytest.mark.parametrize(
    ("order", "snr_db"), [(4, 4.0), (16, 12.0), (64, 17.0), (64, 22.0), (256, 25.0)]
)
def test_single_user_awgn_ber_matches_closed_form(order, snr_db):
    snr = 10 ** (snr_db / 10)
    channel = _realization(np.ones((1, 1), complex), np.ones(1), np.array([[1 / snr]], complex))
    rng = np.random.default_rng(3)
    x = rng.uniform(0.0, 1.0, 200_000).astype(np.float32)  # uniform codes -> uniform symbols
    cfg = SymbolLinkConfig(bits=8, modulation_order=order)
    stats = transmit_symbols([x], channel, cfg, rng).stats[0]
    theory = float(qam_ber_awgn(order, snr))
    assert stats.ber_theory == pytest.approx(theory)
    n_bits = stats.n_symbols * QamConstellation(order).bits_per_symbol
    sigma = np.sqrt(theory / n_bits)  # binomial std of the error fraction (errors ~independent)
    assert abs(stats.ber - theory) < 6 * sigma * 3 + 0.02 * theory
