"""AirComp transceivers and jammers against closed forms, brute force and Monte Carlo."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import random_channel
from rmtllmf.channel import ScenarioConfig, draw_realization, user_mse, worst_case_sum_rate_noise
from rmtllmf.channel.aircomp import (
    AirCompDesign,
    aircomp_mse,
    aircomp_sum,
    alternate,
    design_mmse,
    design_zf,
    inversion_scalings,
    receive_beamformer,
)
from rmtllmf.channel.aircomp_jammer import (
    bs_first_noise,
    project_to_budget,
    simplex_projection,
    worst_case_aircomp_noise,
)
from rmtllmf.channel.aircomp_link import transmit_aircomp
from rmtllmf.channel.link import PAPER_SIGNAL_POWER
from rmtllmf.errors import InputError


def _random_psd(rng, n, trace):
    A = random_channel(rng, n, int(rng.integers(1, n + 1)))
    J = A @ A.conj().T
    return trace * J / np.real(np.trace(J))


def _setting(seed, n_rx=4, n_users=3, floor=0.1):
    rng = np.random.default_rng(seed)
    H = random_channel(rng, n_rx, n_users) * rng.uniform(0.2, 2.0, n_users)[None, :]
    p = rng.uniform(0.2, 2.0, n_users)
    C = floor * np.eye(n_rx) + _random_psd(rng, n_rx, rng.uniform(0.0, 2.0))
    w = rng.uniform(0.3, 2.0, n_users)
    return rng, H, p, C, w


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), n_rx=st.integers(1, 5), w=st.floats(0.05, 20.0))
def test_one_user_mmse_equals_eq5_mse_and_zf_the_unbiased_one(seed, n_rx, w):
    """With one user AirComp is single-user MMSE: ``w^2 mu`` (eq. 5); unbiased: ``w^2 / SINR``."""
    rng = np.random.default_rng(seed)
    h = random_channel(rng, n_rx, 1) * rng.uniform(0.1, 3.0)
    p = np.array([rng.uniform(0.1, 3.0)])
    C = 0.05 * np.eye(n_rx) + _random_psd(rng, n_rx, rng.uniform(0.0, 3.0))
    mu = float(user_mse(h, p, C)[0])
    d = design_mmse(h, p, C, [w])
    assert d.mse == pytest.approx(w**2 * mu, rel=1e-7)
    assert aircomp_mse(h, d.b, d.m, C, [w]) == pytest.approx(d.mse, rel=1e-12)
    zf = design_zf(h, p, C, [w])
    assert zf.mse == pytest.approx(w**2 * mu / (1.0 - mu), rel=1e-7)


@pytest.mark.parametrize("seed", range(6))
def test_alternation_never_raises_the_mse(seed):
    _, H, p, C, w = _setting(seed, n_rx=6, n_users=5)
    plain = alternate(H, p, C, w, np.sqrt(p), max_iter=3000)
    assert np.all(np.diff(plain.trace) <= 1e-12 * plain.trace[0])
    d = design_mmse(H, p, C, w)
    assert np.all(np.diff(d.trace) <= 1e-12 * d.trace[0])
    # the L-BFGS starts reach at least what the alternation reaches alone
    assert d.mse <= plain.mse * (1 + 1e-9)
    assert d.mse == pytest.approx(aircomp_mse(H, d.b, d.m, C, w), rel=1e-12)
    assert np.all(np.abs(d.b) ** 2 <= p * (1 + 1e-12))


@pytest.mark.parametrize("seed", range(4))
def test_each_block_step_is_the_brute_force_minimum(seed):
    """The beamformer for fixed ``b`` and the scalings for fixed ``m`` beat random
    perturbations and a grid over each user's disk of power ``p_q``."""
    rng, H, p, C, w = _setting(seed)
    b = np.sqrt(p) * np.exp(1j * rng.uniform(0, 2 * np.pi, p.size))
    m = receive_beamformer(H, b, C, w)
    best = aircomp_mse(H, b, m, C, w)
    for _ in range(200):
        step = (rng.standard_normal(m.size) + 1j * rng.standard_normal(m.size)) * 1e-3
        assert aircomp_mse(H, b, m + step * np.linalg.norm(m), C, w) >= best
    b_opt = inversion_scalings(H, m, p, w)
    a = m.conj() @ H
    radius = np.linspace(0, 1, 101)[:, None] * np.sqrt(p)[None, :]
    phase = np.exp(1j * np.linspace(0, 2 * np.pi, 361))
    for q in range(p.size):
        grid = (radius[:, q, None] * phase[None, :]).ravel()
        brute = np.min(np.abs(a[q] * grid - w[q]) ** 2)
        assert np.abs(a[q] * b_opt[q] - w[q]) ** 2 <= brute + 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_zf_is_unbiased_and_never_beats_mmse(seed):
    _, H, p, C, w = _setting(seed, n_rx=6, n_users=4)
    zf = design_zf(H, p, C, w)
    np.testing.assert_allclose(zf.gains, w, rtol=1e-10)
    assert zf.bias == pytest.approx(0.0, abs=1e-18 + 1e-10 * zf.mse)
    assert np.all(np.abs(zf.b) ** 2 <= p * (1 + 1e-10))
    assert np.max(np.abs(zf.b) ** 2 / p) == pytest.approx(1.0, rel=1e-9)  # someone at full power
    assert design_mmse(H, p, C, w).mse <= zf.mse * (1 + 1e-12)


def test_zf_needs_a_thermal_floor():
    rng = np.random.default_rng(0)
    H = random_channel(rng, 3, 2)
    with pytest.raises(InputError, match="thermal floor"):
        design_zf(H, [1.0, 1.0], np.diag([1.0, 1.0, 0.0]), [1.0, 1.0])


@pytest.mark.parametrize("seed", range(3))
def test_literal_sum_matches_the_closed_form_mse(seed):
    """Monte Carlo over 400k real entries: for any transceiver (random complex ``m`` and ``b``,
    so the gains have a phase that mixes the two entries of a channel use), the error of the
    literal received sum has the variance of the closed form, within 5 standard errors."""
    rng, H, p, C, w = _setting(seed)
    m = random_channel(rng, H.shape[0], 1)[:, 0]
    b = np.sqrt(p) * rng.uniform(0.2, 1.0, p.size) * np.exp(1j * rng.uniform(0, 6.3, p.size))
    g = (m.conj() @ H) * b
    noise = float(np.real(m.conj() @ C @ m))
    design = AirCompDesign(m, b, w, g, noise, "mmse")
    n = 400_000
    tau = [w[q] * rng.standard_normal(n) for q in range(p.size)]
    received = aircomp_sum(tau, design, rng).astype(np.float64)
    error = received - np.sum(tau, axis=0)
    closed = aircomp_mse(H, b, m, C, w)
    assert closed == pytest.approx(design.mse, rel=1e-12)
    assert np.mean(error**2) == pytest.approx(closed, rel=5 * np.sqrt(2.0 / n))


@pytest.mark.parametrize("seed", range(3))
def test_bs_first_saddle_point_with_b_fixed(seed):
    """With ``b`` fixed, the robust beamformer ``m*`` (MMSE against ``(sigma^2 + P_N) I``) and
    the aligned jammer form a saddle point: ``m*`` is the MMSE beamformer against that jammer,
    and no covariance of the same trace does worse against ``m*``."""
    rng, H, p, _, w = _setting(seed, n_rx=5, n_users=3)
    sigma2, budget = 0.1, 1.5
    b = np.sqrt(p) * np.exp(1j * rng.uniform(0, 6.3, p.size))
    m_star = receive_beamformer(H, b, (sigma2 + budget) * np.eye(5), w)
    u = m_star / np.linalg.norm(m_star)
    C_star = sigma2 * np.eye(5) + budget * np.outer(u, u.conj())
    np.testing.assert_allclose(receive_beamformer(H, b, C_star, w), m_star, rtol=1e-9)
    value = aircomp_mse(H, b, m_star, C_star, w)
    for _ in range(100):
        other = sigma2 * np.eye(5) + _random_psd(rng, 5, budget)
        assert aircomp_mse(H, b, m_star, other, w) <= value * (1 + 1e-12)
        m_other = m_star + 0.1 * np.linalg.norm(m_star) * random_channel(rng, 5, 1)[:, 0]
        assert aircomp_mse(H, b, m_other, C_star, w) >= value * (1 - 1e-12)


def test_bs_first_bound_holds_whatever_the_jammer():
    """The base station's robust design keeps its promise against any covariance of trace P_N."""
    rng, H, p, _, w = _setting(11, n_rx=4, n_users=3)
    sigma2, budget = 0.2, 2.0
    jam = bs_first_noise(H, p, w, budget, sigma2)
    assert np.real(np.trace(jam.C)) == pytest.approx(4 * sigma2 + budget, rel=1e-12)
    for _ in range(50):
        other = sigma2 * np.eye(4) + _random_psd(rng, 4, budget)
        assert aircomp_mse(H, jam.design.b, jam.design.m, other, w) <= jam.value * (1 + 1e-12)


def test_jammer_first_beats_p1_and_random_covariances():
    """The ascent's ``min_{m,b} MSE`` is at least P1's and that of each of 100 random
    covariances of the same trace (each evaluated by the same adapting design)."""
    channel = draw_realization(ScenarioConfig(n_users=4, n_antennas=6), np.random.default_rng(3))
    H, p = channel.H, channel.p
    sigma2 = channel.thermal_power
    budget = 10.0 * 6 * sigma2
    w = np.array([1.0, 0.5, 2.0, 1.2])
    jam = worst_case_aircomp_noise(H, p, w, budget, sigma2)
    assert np.all(np.diff(jam.trace) >= 0)
    part = jam.C - sigma2 * np.eye(6)
    assert np.real(np.trace(part)) == pytest.approx(budget, rel=1e-9)
    assert np.linalg.eigvalsh(part)[0] >= -1e-9 * budget
    assert design_mmse(H, p, jam.C, w).mse == pytest.approx(jam.value, rel=1e-6)
    p1 = worst_case_sum_rate_noise(H, p, budget, sigma2)
    assert jam.value >= design_mmse(H, p, p1, w).mse * (1 - 1e-9)
    rng = np.random.default_rng(0)
    for _ in range(100):
        other = sigma2 * np.eye(6) + _random_psd(rng, 6, budget)
        assert jam.value >= design_mmse(H, p, other, w).mse * (1 - 1e-9)


@settings(max_examples=60, deadline=None)
@given(
    v=st.lists(st.floats(-5, 5), min_size=1, max_size=8),
    total=st.floats(0.01, 10.0),
)
def test_simplex_projection_matches_bisection(v, total):
    """The sort-based projection against bisection on the threshold of
    ``sum_i max(v_i - theta, 0) = total``."""
    x = np.array(v)
    lo, hi = x.min() - total, x.max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.sum(np.clip(x - mid, 0, None)) > total else (lo, mid)
    np.testing.assert_allclose(simplex_projection(x, total), np.clip(x - lo, 0, None), atol=1e-9)


def test_projection_to_budget_is_psd_of_the_right_trace():
    rng = np.random.default_rng(1)
    A = random_channel(rng, 4, 4)
    X = A + A.conj().T  # indefinite Hermitian
    Y = project_to_budget(X, 3.0)
    assert np.real(np.trace(Y)) == pytest.approx(3.0)
    assert np.linalg.eigvalsh(Y)[0] >= -1e-12
    P = _random_psd(rng, 4, 3.0)
    np.testing.assert_allclose(project_to_budget(P, 3.0), P, atol=1e-12)  # already feasible


def test_link_normalises_per_segment_and_meets_each_closed_form():
    """On the relative scale each segment's symbols have unit power: the received sum's error
    per segment has the variance of that segment's transceiver."""
    channel = draw_realization(ScenarioConfig(n_users=3, n_antennas=4), np.random.default_rng(5))
    rng = np.random.default_rng(6)
    sizes, scales = [200_000, 200_000], [[1.0, 3.0, 0.5], [0.01, 0.02, 0.03]]
    vectors = [
        np.concatenate([scales[j][q] * rng.standard_normal(n) for j, n in enumerate(sizes)])
        for q in range(3)
    ]
    seg = np.array([0, sizes[0], sum(sizes)])
    out = transmit_aircomp(vectors, channel, rng, scale="relative", segments=seg)
    assert len(out.designs) == 2
    error = out.received.astype(np.float64) - np.sum(vectors, axis=0)
    for j, d in enumerate(out.designs):
        np.testing.assert_allclose(
            d.w, [np.sqrt(np.mean(v[seg[j] : seg[j + 1]] ** 2)) for v in vectors]
        )
        measured = np.mean(error[seg[j] : seg[j + 1]] ** 2)
        assert measured == pytest.approx(d.mse, rel=5 * np.sqrt(2.0 / sizes[j]))
    whole = transmit_aircomp(vectors, channel, rng, scale="snr", segments=seg)
    assert whole.designs[0] is whole.designs[1]  # one scale per user: one transceiver
    expected = [np.sqrt(np.mean(v**2) / PAPER_SIGNAL_POWER) for v in vectors]
    np.testing.assert_allclose(whole.designs[0].w, expected)


def test_link_refuses_unequal_lengths():
    channel = draw_realization(ScenarioConfig(n_users=2, n_antennas=2), np.random.default_rng(0))
    with pytest.raises(InputError, match="equal lengths"):
        transmit_aircomp([np.ones(4), np.ones(5)], channel, np.random.default_rng(0))
