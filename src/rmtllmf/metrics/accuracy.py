"""Accuracy summaries used across the project.

* normalized accuracy (FusionBench / tangent task arithmetic): the merged model's accuracy on a
  task divided by that task's own fine-tuned accuracy, averaged over tasks;
* gap recovery: ``(acc_merged - acc_base) / (acc_ft - acc_base)`` on mean absolute accuracy, the
  guard against a normalized accuracy near 1 when fine-tuning gains nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rmtllmf.errors import InputError


def normalized_accuracy(merged: Mapping[str, float], finetuned: Mapping[str, float]) -> float:
    """``mean_t merged[t] / finetuned[t]`` over the tasks of ``merged``."""
    missing = [t for t in merged if t not in finetuned]
    if missing:
        raise InputError(f"no fine-tuned accuracy for tasks {missing}")
    zero = [t for t in merged if finetuned[t] <= 0]
    if zero:
        raise InputError(f"fine-tuned accuracy of {zero} is 0: normalized accuracy is undefined")
    return float(np.mean([merged[t] / finetuned[t] for t in merged]))


def gap_recovery(
    merged: Mapping[str, float], base: Mapping[str, float], finetuned: Mapping[str, float]
) -> float:
    """Fraction of the base-to-fine-tuned gap in mean accuracy that the merge recovers."""
    tasks = list(merged)
    m = np.mean([merged[t] for t in tasks])
    b = np.mean([base[t] for t in tasks])
    f = np.mean([finetuned[t] for t in tasks])
    return float((m - b) / (f - b)) if f != b else float("nan")


def recovered_fraction(value: float, chance: float, clean: float) -> float:
    """``(acc - chance) / (clean - chance)``: the share of the chance-to-clean range a result
    keeps. Unlike normalized accuracy it compares suites of different class counts (chance is
    0.25 normalized here, 0.0013-0.1 on the paper's datasets)."""
    span = clean - chance
    return float((value - chance) / span) if span > 0 else float("nan")
