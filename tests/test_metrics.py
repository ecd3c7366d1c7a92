"""Accuracy summaries against hand-computed values."""

from __future__ import annotations

import math

import pytest

from rmtllmf.errors import InputError
from rmtllmf.metrics import gap_recovery, normalized_accuracy


def test_normalized_accuracy_and_gap_recovery():
    merged = {"a": 0.6, "b": 0.9}
    ft = {"a": 0.8, "b": 1.0}
    base = {"a": 0.4, "b": 0.8}
    assert normalized_accuracy(merged, ft) == pytest.approx((0.75 + 0.9) / 2)
    # mean merged 0.75, base 0.6, ft 0.9 -> (0.75 - 0.6) / (0.9 - 0.6) = 0.5
    assert gap_recovery(merged, base, ft) == pytest.approx(0.5)
    assert math.isnan(gap_recovery(merged, ft, ft))


def test_undefined_cases_are_errors():
    with pytest.raises(InputError, match="no fine-tuned accuracy"):
        normalized_accuracy({"a": 0.5}, {})
    with pytest.raises(InputError, match="undefined"):
        normalized_accuracy({"a": 0.5}, {"a": 0.0})


def test_recovered_fraction_is_the_share_of_the_chance_to_clean_range():
    from rmtllmf.metrics import recovered_fraction

    assert recovered_fraction(0.5, chance=0.1, clean=0.9) == pytest.approx(0.5)
    assert recovered_fraction(0.1, chance=0.1, clean=0.9) == 0.0
    assert recovered_fraction(0.05, chance=0.1, clean=0.9) == pytest.approx(-0.0625)
    assert math.isnan(recovered_fraction(0.5, chance=0.9, clean=0.9))
