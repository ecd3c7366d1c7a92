"""Bad input to the channel API: clear errors that name the argument."""

from __future__ import annotations

import numpy as np
import pytest

from oracles import random_channel
from rmtllmf.channel import sic_rates, sum_rate, user_mse
from rmtllmf.errors import InputError


@pytest.fixture
def good(rng):
    return random_channel(rng, 4, 2), np.ones(2), np.eye(4, dtype=complex)


@pytest.mark.parametrize("fn", [sic_rates, user_mse, sum_rate])
def test_bad_arguments_raise_input_errors(good, fn):
    H, p, C = good
    cases = [
        ((H.T.reshape(-1), p, C), "H must be a 2-D"),
        ((H, p[:1], C), r"p must have shape \(2,\)"),
        ((H, -p, C), "p must be >= 0"),
        ((H, p + 1j, C), "real transmit powers"),
        ((np.where(H[0, 0] == H, np.nan, H), p, C), "H contains NaN"),
        ((H, p, np.eye(3)), r"C_z must have shape \(4, 4\)"),
        ((H, p, np.triu(np.ones((4, 4)))), "not Hermitian"),
        ((H, p, -np.eye(4)), "not positive semi-definite"),
        ((H, p, np.full((4, 4), np.inf)), "C_z contains NaN"),
    ]
    for args, message in cases:
        with pytest.raises(InputError, match=message):
            fn(*args)


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)


def test_unknown_scenario_is_a_clear_error(good):
    from rmtllmf.channel import noise_covariance

    H, p, _ = good
    with pytest.raises(InputError, match="unknown scenario 'bogus'"):
        noise_covariance("bogus", H, p, 1.0, 1.0)  # type: ignore[arg-type]
