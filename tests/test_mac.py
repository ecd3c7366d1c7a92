"""MIMO MAC rates and MSE (eqs. 2-5) against brute force and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import brute_force_sic_rates, logdet_sum_rate, random_channel
from rmtllmf.channel import (
    ideal_noise,
    sic_order,
    sic_rates,
    sum_rate,
    user_mse,
    worst_case_strongest_user_noise,
    worst_case_sum_rate_noise,
)
from rmtllmf.errors import DegenerateChannelWarning


def _scenario_noises(H, p, floor, budget):
    return {
        "ideal": ideal_noise(H.shape[0], floor),
        "sum-rate": worst_case_sum_rate_noise(H, p, budget, floor),
        "strongest-user": worst_case_strongest_user_noise(H, p, budget, floor),
    }


@pytest.mark.parametrize("shape", [(16, 8), (4, 4), (3, 6), (1, 3)])
def test_sic_rates_match_brute_force_and_chain_rule(rng, shape):
    H = random_channel(rng, *shape) * rng.uniform(0.1, 3.0, shape[1])
    p = rng.uniform(0.2, 2.0, shape[1])
    for C in _scenario_noises(H, p, floor=0.05, budget=2.0).values():
        rates = sic_rates(H, p, C)
        np.testing.assert_allclose(rates, brute_force_sic_rates(H, p, C), rtol=1e-9)
        # chain rule: SIC achieves the sum capacity
        np.testing.assert_allclose(rates.sum(), logdet_sum_rate(H, p, C), rtol=1e-9)
        np.testing.assert_allclose(sum_rate(H, p, C), logdet_sum_rate(H, p, C), rtol=1e-9)
        np.testing.assert_allclose(user_mse(H, p, C), np.exp(-rates), rtol=1e-12)


def test_results_follow_caller_order(rng):
    H = random_channel(rng, 8, 5)
    p = rng.uniform(0.5, 1.5, 5)
    C = ideal_noise(8, 0.1)
    perm = rng.permutation(5)
    np.testing.assert_allclose(sic_rates(H[:, perm], p[perm], C), sic_rates(H, p, C)[perm])
    assert set(sic_order(H, p)) == set(range(5))


def test_sic_order_is_ascending_strength():
    H = np.diag([3.0, 1.0, 2.0]).astype(complex)
    assert sic_order(H, np.ones(3)).tolist() == [1, 2, 0]
    # power counts too: p_q ||h_q||^2
    assert sic_order(H, np.array([0.01, 1.0, 1.0])).tolist() == [0, 1, 2]


def test_single_user_awgn_rate_is_shannon(rng):
    h = random_channel(rng, 4, 1)
    p, sigma2 = np.array([0.3]), 0.07
    expected = np.log(1 + 0.3 * np.sum(np.abs(h) ** 2) / sigma2)
    np.testing.assert_allclose(sic_rates(h, p, ideal_noise(4, sigma2)), [expected], rtol=1e-12)


def test_strongest_user_gets_no_interference(rng):
    """The last user in SIC order sees only noise: R_Q = log(1 + p h^H C^-1 h)."""
    H = random_channel(rng, 6, 4)
    p = np.ones(4)
    C = ideal_noise(6, 0.5)
    q = sic_order(H, p)[-1]
    expected = np.log(1 + np.sum(np.abs(H[:, q]) ** 2) / 0.5)
    np.testing.assert_allclose(sic_rates(H, p, C)[q], expected, rtol=1e-12)


def test_degenerate_strongest_user_jammer_without_floor(rng):
    """P2 with no thermal floor: rank-one noise, every other user has a noise-free direction."""
    H = random_channel(rng, 4, 3)
    p = np.ones(3)
    C = worst_case_strongest_user_noise(H, p, jammer_power=2.0)
    q = sic_order(H, p)[-1]
    with pytest.warns(DegenerateChannelWarning, match="thermal floor"):
        rates = sic_rates(H, p, C)
    others = [u for u in range(3) if u != q]
    assert np.all(np.isinf(rates[others]))
    np.testing.assert_allclose(rates[q], np.log1p(np.sum(np.abs(H[:, q]) ** 2) / 2.0), rtol=1e-9)
    with pytest.warns(DegenerateChannelWarning):
        assert user_mse(H, p, C)[others].tolist() == [0.0, 0.0]


def test_singular_noise_inside_signal_range_is_finite(rng):
    """P1 without floor puts noise only on the signal subspace: singular C_z, finite rates."""
    H = random_channel(rng, 8, 3)
    p = np.ones(3)
    C = worst_case_sum_rate_noise(H, p, jammer_power=1.0)
    assert np.linalg.matrix_rank(C, tol=1e-10) == 3
    rates = sic_rates(H, p, C)
    assert np.all(np.isfinite(rates))
    # on the range of C the pseudo-inverse formula is the limit of a vanishing floor
    limit = sic_rates(H, p, C + 1e-11 * np.eye(8))
    np.testing.assert_allclose(rates, limit, rtol=1e-6)
    np.testing.assert_allclose(rates.sum(), sum_rate(H, p, C), rtol=1e-9)


def test_zero_power_user_has_zero_rate(rng):
    H = random_channel(rng, 4, 3)
    rates = sic_rates(H, np.array([1.0, 0.0, 1.0]), ideal_noise(4, 0.1))
    assert rates[1] == 0.0
    assert rates[0] > 0 and rates[2] > 0


@st.composite
def channels(draw):
    n_rx = draw(st.integers(1, 6))
    n_users = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    H = random_channel(rng, n_rx, n_users) * np.exp(rng.uniform(-3, 3, n_users))
    p = np.exp(rng.uniform(-2, 2, n_users))
    floor = float(np.exp(rng.uniform(-4, 1)))
    return H, p, floor


@settings(max_examples=60, deadline=None)
@given(channels(), st.sampled_from(["ideal", "sum-rate", "strongest-user"]))
def test_mse_in_unit_interval_and_rates_nonnegative(channel, scenario):
    H, p, floor = channel
    C = _scenario_noises(H, p, floor, budget=3.0 * floor)[scenario]
    mu = user_mse(H, p, C)
    rates = sic_rates(H, p, C)
    assert np.all((mu > 0) & (mu <= 1))
    assert np.all(rates >= 0)


@settings(max_examples=60, deadline=None)
@given(
    channels(),
    st.sampled_from(["sum-rate", "strongest-user"]),
    st.floats(0.0, 10.0),
    st.floats(0.0, 10.0),
)
def test_every_user_mse_is_monotone_in_jammer_power(channel, scenario, a, b):
    """More jammer power means more noise in the PSD order (both jammers), so every mu_q grows."""
    H, p, floor = channel
    small, large = sorted((a * floor, b * floor))
    mu_small = user_mse(H, p, _scenario_noises(H, p, floor, small)[scenario])
    mu_large = user_mse(H, p, _scenario_noises(H, p, floor, large)[scenario])
    assert np.all(mu_large >= mu_small * (1 - 1e-9))
