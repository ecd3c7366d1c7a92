"""Worst-case noise covariances (P1, P2) against a numerical optimiser and closed forms."""

from __future__ import annotations

from decimal import Decimal, getcontext

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from oracles import logdet_sum_rate, random_channel
from rmtllmf.channel import (
    reverse_waterfill,
    sic_order,
    sic_rates,
    sum_rate,
    worst_case_strongest_user_noise,
    worst_case_sum_rate_noise,
)
from rmtllmf.channel.jammer import waterfill_level
from rmtllmf.errors import InputError


def _random_jammer(rng, n, budget):
    A = random_channel(rng, n, rng.integers(1, n + 1))
    J = A @ A.conj().T
    return budget * J / np.real(np.trace(J))


def _numerical_worst_case(H, p, budget, floor, rng, restarts=6):
    """min over PSD C_jam with tr = budget of log det(I + S (floor I + C_jam)^{-1}),
    by BFGS over a complex Cholesky factor C_jam = budget * L L^H / tr(L L^H)."""
    n = H.shape[0]
    S = (H * p) @ H.conj().T
    il = np.tril_indices(n)
    m = len(il[0])

    def objective(theta):
        L = np.zeros((n, n), complex)
        L[il] = theta[:m] + 1j * theta[m:]
        J = L @ L.conj().T
        C = floor * np.eye(n) + budget * J / np.real(np.trace(J))
        return np.linalg.slogdet(C + S)[1] - np.linalg.slogdet(C)[1]

    best = np.inf
    for _ in range(restarts):
        res = minimize(
            objective, rng.standard_normal(2 * m), method="BFGS", options={"gtol": 1e-11}
        )
        best = min(best, res.fun)
    return best


@pytest.mark.parametrize(
    ("n_rx", "n_users", "floor", "digits"),
    [(3, 2, 0.3, 5), (3, 3, 0.05, 5), (2, 3, 0.0, 5), (3, 4, 0.0, 5), (3, 2, 0.0, 4)],
)
def test_p1_closed_form_equals_numerical_minimum(rng, n_rx, n_users, floor, digits):
    """Without a floor and with N_R > Q the optimum is singular (no jamming off the signal
    subspace): BFGS then only approaches it from inside the cone, so 4 digits are asked there."""
    for _ in range(2):
        H = random_channel(rng, n_rx, n_users)
        p = rng.uniform(0.5, 2.0, n_users)
        budget = float(rng.uniform(0.5, 3.0))
        C = worst_case_sum_rate_noise(H, p, budget, floor)
        ours = sum_rate(H, p, C)
        numeric = _numerical_worst_case(H, p, budget, floor, rng)
        assert ours <= numeric + 1e-9  # the closed form is the true minimum
        assert abs(ours - numeric) <= 10.0**-digits * ours


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 6),
    st.integers(1, 5),
    st.one_of(st.just(0.0), st.floats(1e-60, 2.0)),
)
def test_p1_is_feasible_psd_and_beats_random_jammers(seed, n_rx, n_users, floor):
    rng = np.random.default_rng(seed)
    H = random_channel(rng, n_rx, n_users)
    p = rng.uniform(0.1, 2.0, n_users)
    budget = float(rng.uniform(0.1, 5.0))
    C = worst_case_sum_rate_noise(H, p, budget, floor)
    np.testing.assert_allclose(C, C.conj().T, atol=1e-14)
    C_jam = C - floor * np.eye(n_rx)
    np.testing.assert_allclose(np.real(np.trace(C_jam)), budget, rtol=1e-12)
    assert np.linalg.eigvalsh(C_jam)[0] >= -1e-12 * budget
    # every random jammer with the same budget leaves a sum rate at least as high; they are
    # drawn full-rank so that the explicit-inverse oracle is well conditioned on them
    worst = sum_rate(H, p, C)
    for _ in range(10):
        A = random_channel(rng, n_rx, n_rx)
        J = A @ A.conj().T
        other = floor * np.eye(n_rx) + budget * J / np.real(np.trace(J))
        assert logdet_sum_rate(H, p, other) >= worst - 1e-10 * max(worst, 1.0)


def test_p1_shares_eigenvectors_with_signal_covariance(rng):
    H = random_channel(rng, 6, 3)
    p = np.ones(3)
    C = worst_case_sum_rate_noise(H, p, 2.0, 0.1)
    S = (H * p) @ H.conj().T
    np.testing.assert_allclose(C @ S, S @ C, atol=1e-12)  # commuting Hermitian = common eigenbasis


def test_waterfill_matches_eq14_without_floor():
    """sigma_i = (u_i/2)(sqrt(1 + 4/(u_i nu)) - 1) at the nu the bisection found (eq. 14)."""
    u = np.array([5.0, 2.0, 0.7, 0.0])
    s, nu = reverse_waterfill(u, 3.0)
    printed = np.where(u > 0, u / 2 * (np.sqrt(1 + 4 / np.where(u > 0, u, 1) / nu) - 1), 0.0)
    np.testing.assert_allclose(s, printed, rtol=1e-10)
    assert s.sum() == pytest.approx(3.0, rel=1e-14)
    assert s[-1] == 0.0


def test_waterfill_level_keeps_precision_at_high_snr():
    """The printed eq. 14 cancels catastrophically when u*nu >> 1; ours matches 50-digit maths."""
    getcontext().prec = 50
    for u, nu in [(1e8, 1.0), (1e12, 3.0), (2.5, 1e9), (1e-6, 1e-3)]:
        du, dnu = Decimal(u), Decimal(nu)
        exact = du / 2 * ((1 + 4 / (du * dnu)).sqrt() - 1)
        ours = waterfill_level(np.array([u]), nu)[0]
        assert ours == pytest.approx(float(exact), rel=1e-14)


@pytest.mark.parametrize("budget", [2.2250738585e-313, 1e-300, 5e-324])
def test_reverse_waterfill_spends_a_subnormal_budget(budget):
    """A budget so small that 1/P_N and nu overflow (found by hypothesis): the whole budget goes
    to the one signal direction, and no numpy warning is raised (warnings are errors here)."""
    s, nu = reverse_waterfill(np.array([5.21230569, 0.0]), budget)
    assert s[1] == 0.0
    assert s[0] == pytest.approx(budget, rel=1e-9, abs=0.0)
    assert nu == pytest.approx(1.0 / budget, rel=1e-9)  # x = 1/nu at high SNR; inf past 1e308


def test_waterfill_with_floor_leaves_weak_directions_unjammed():
    u = np.array([100.0, 1.0, 1e-3])
    s, nu = reverse_waterfill(u, 0.5, thermal_power=1.0)
    assert s.sum() == pytest.approx(0.5)
    assert s[0] > 0 and s[2] == 0.0
    # KKT: active directions share one multiplier nu: x(x+u) = u/nu with x = floor + s
    x = 1.0 + s[s > 0]
    np.testing.assert_allclose(x * (x + u[s > 0]), u[s > 0] / nu, rtol=1e-10)
    # inactive direction: the marginal gain of jamming it is below nu
    assert u[2] / (1.0 * (1.0 + u[2])) <= nu


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0.0, 1e6), min_size=1, max_size=16),
    st.floats(1e-9, 1e6),
    st.floats(0.0, 1e3),
)
@example(u=[5e-324], budget=0.25, floor=1.0)  # a subnormal eigenvalue (found by hypothesis)
@example(u=[5e-324], budget=1.0, floor=1.0)
def test_reverse_waterfill_spends_exactly_the_budget(u, budget, floor):
    s, _ = reverse_waterfill(np.array(u), budget, floor)
    assert np.all(s >= 0)
    if max(u) > 0:
        assert s.sum() == pytest.approx(budget, rel=1e-12)


def test_reverse_waterfill_small_signal_limit():
    """As u -> 0 the KKT condition x(x + u) = u / nu gives x_i = sqrt(u_i / nu): the total noise
    splits in proportion to sqrt(u_i), down to subnormal eigenvalues."""
    for u in ([1e-320, 4e-320], [3e-308, 1e-310], [1e-12, 9e-12]):
        u = np.array(u)
        budget, floor = 1e6, 1e3
        s, _ = reverse_waterfill(u, budget, floor)
        x = floor + s
        expected = np.sqrt(u) / np.sqrt(u).sum() * (budget + 2 * floor)
        np.testing.assert_allclose(x, expected, rtol=1e-9)


def test_p2_closed_form_and_optimality(rng):
    H = random_channel(rng, 8, 4) * np.array([0.5, 1.0, 2.0, 0.7])
    p = np.ones(4)
    floor, budget = 0.2, 3.0
    C = worst_case_strongest_user_noise(H, p, budget, floor)
    q = sic_order(H, p)[-1]
    assert q == 2
    h = H[:, q]
    expected = np.log(1 + np.sum(np.abs(h) ** 2) / (floor + budget))
    assert sic_rates(H, p, C)[q] == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(np.real(np.trace(C)) - 8 * floor, budget, rtol=1e-12)
    for _ in range(50):  # no jammer with the same budget hurts the strongest user more
        other = floor * np.eye(8) + _random_jammer(rng, 8, budget)
        assert sic_rates(H, p, other)[q] >= expected - 1e-12


@pytest.mark.parametrize("fn", [worst_case_sum_rate_noise, worst_case_strongest_user_noise])
def test_jammer_input_errors(rng, fn):
    H = random_channel(rng, 3, 2)
    with pytest.raises(InputError, match="jammer_power"):
        fn(H, np.ones(2), -1.0)
    with pytest.raises(InputError, match="thermal_power"):
        fn(H, np.ones(2), 1.0, float("nan"))
    with pytest.raises(InputError, match="p must have shape"):
        fn(H, np.ones(3), 1.0)
    with pytest.raises(InputError, match="2-D"):
        fn(H[:, 0], np.ones(1), 1.0)
