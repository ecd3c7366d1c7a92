"""Gray M-QAM mapping and its BER against closed forms and Monte Carlo."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erfc

from oracles import pam_gray_ber
from rmtllmf.channel import QamConstellation, qam_ber_awgn
from rmtllmf.errors import InputError

ORDERS = [4, 16, 64, 256]


@pytest.mark.parametrize("order", ORDERS)
def test_constellation_has_unit_energy_and_distinct_points(order):
    c = QamConstellation(order)
    assert np.mean(np.abs(c.points) ** 2) == pytest.approx(1.0, rel=1e-6)
    assert len(set(np.round(c.points, 5).tolist())) == order


@pytest.mark.parametrize("order", ORDERS)
def test_nearest_neighbours_differ_in_one_bit(order):
    c = QamConstellation(order)
    d_min = 2 / c.amplitude_scale
    for i in range(order):
        dist = np.abs(c.points - c.points[i])
        for j in np.flatnonzero(np.isclose(dist, d_min, rtol=1e-4)):
            assert bin(i ^ j).count("1") == 1


@pytest.mark.parametrize("order", ORDERS)
def test_hard_demapping_is_minimum_distance(rng, order):
    c = QamConstellation(order)
    assert np.array_equal(c.demodulate(c.points), np.arange(order))
    z = (rng.standard_normal(5000) + 1j * rng.standard_normal(5000)).astype(np.complex64)
    brute = np.argmin(np.abs(z[:, None] - c.points[None, :]), axis=1)
    assert np.array_equal(c.demodulate(z), brute)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("snr_db", [-3.0, 5.0, 12.0, 20.0, 30.0])
def test_closed_form_ber_matches_exact_pam_transitions(order, snr_db):
    snr = 10 ** (snr_db / 10)
    assert float(qam_ber_awgn(order, snr)) == pytest.approx(pam_gray_ber(order, snr), rel=1e-10)


def test_qpsk_ber_is_q_function():
    snr = np.array([0.1, 1.0, 10.0])
    np.testing.assert_allclose(qam_ber_awgn(4, snr), 0.5 * erfc(np.sqrt(snr / 2)), rtol=1e-12)


def test_unsupported_order_is_a_clear_error():
    with pytest.raises(InputError, match="supported"):
        QamConstellation(32)
    with pytest.raises(InputError, match="supported"):
        qam_ber_awgn(8, 1.0)
