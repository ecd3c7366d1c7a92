"""Per-segment quantisation and bit packing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmtllmf.channel.quantize import codes_to_symbols, fit_quantizer, symbols_to_codes
from rmtllmf.errors import InputError


def _bitstring_symbols(codes, bits, k):
    stream = "".join(format(int(c), f"0{bits}b") for c in codes)
    stream += "0" * ((-len(stream)) % k)
    return [int(stream[i : i + k], 2) for i in range(0, len(stream), k)]


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("k", [2, 4, 6, 8])
def test_bit_packing_matches_bit_strings(rng, bits, k):
    codes = rng.integers(0, 1 << bits, size=41).astype(np.uint16)
    symbols = codes_to_symbols(codes, bits, k)
    assert symbols.tolist() == _bitstring_symbols(codes, bits, k)
    assert np.array_equal(symbols_to_codes(symbols, bits, k, codes.size), codes)


@settings(max_examples=80, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 16),
    st.lists(st.integers(0, 50), min_size=1, max_size=6),
)
def test_roundtrip_error_is_at_most_half_a_step(seed, bits, sizes):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(sum(sizes)) * np.exp(rng.uniform(-8, 3))).astype(np.float32)
    segments = np.cumsum([0, *sizes])
    q = fit_quantizer(x, bits, segments)
    codes = q.encode(x)
    assert codes.max(initial=0) < (1 << bits)
    err = np.abs(q.decode(codes).astype(np.float64) - x)
    step = np.repeat(q.steps, sizes)
    assert np.all(err <= step / 2 + 1e-6 * np.abs(x) + 1e-30)


def test_slices_decode_like_the_whole(rng):
    x = rng.standard_normal(1000)
    q = fit_quantizer(x, 8, [0, 100, 100, 700, 1000])
    whole = q.encode(x)
    assert np.array_equal(np.concatenate([q.encode(x[:333], 0), q.encode(x[333:], 333)]), whole)
    np.testing.assert_array_equal(q.decode(whole[650:720], 650), q.decode(whole)[650:720])


def test_constant_segment_is_exact():
    x = np.array([2.5, 2.5, 2.5, -1.0, 1.0])
    q = fit_quantizer(x, 4, [0, 3, 5])
    np.testing.assert_array_equal(q.decode(q.encode(x))[:3], [2.5, 2.5, 2.5])


def test_bad_input():
    with pytest.raises(InputError, match="NaN"):
        fit_quantizer(np.array([1.0, np.nan]), 8)
    with pytest.raises(InputError, match="bits"):
        fit_quantizer(np.zeros(4), 17)
    with pytest.raises(InputError, match="segments"):
        fit_quantizer(np.zeros(4), 8, [0, 5])
    with pytest.raises(InputError, match="flat"):
        fit_quantizer(np.zeros((2, 2)), 8)
