"""Intervals over seeds and paired orderings (rmtllmf.report.seeds), checked against the
standard library's statistics, a tabulated t quantile and scipy's paired t-test."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats

from rmtllmf.report import markdown
from rmtllmf.report.seeds import compare, interval, uncertainty
from rmtllmf.study.experiment import ExperimentConfig
from rmtllmf.study.store import RunRecord, RunResult

T_0975_4 = 2.7764451051977987
"""t quantile 0.975 with 4 degrees of freedom (statistical tables)."""


def test_the_interval_is_students_t_over_seeds():
    values = [0.483, 0.607, 0.578, 0.500, 0.535]  # five seeds of one cell
    got = interval(values)
    half = T_0975_4 * statistics.stdev(values) / math.sqrt(5)
    assert got.n == 5 and got.mean == pytest.approx(statistics.fmean(values), abs=1e-15)
    assert (got.lo, got.hi) == pytest.approx((got.mean - half, got.mean + half), abs=1e-12)
    one = interval([0.4])
    assert (one.mean, one.lo, one.hi, one.n) == (0.4, 0.4, 0.4, 1)
    assert interval([]).n == 0 and math.isnan(interval([]).mean)


@pytest.mark.parametrize(
    ("better", "worse", "verdict"),
    [
        ([0.48, 0.61, 0.58, 0.50, 0.54], [0.13, 0.34, 0.23, 0.14, 0.21], "holds"),
        ([0.13, 0.34, 0.23, 0.14, 0.21], [0.48, 0.61, 0.58, 0.50, 0.54], "reversed"),
        ([0.20, 0.23, 0.20, 0.21, 0.22], [0.19, 0.19, 0.21, 0.19, 0.22], "not resolved"),
    ],
)
def test_paired_orderings_agree_with_scipy(better, worse, verdict):
    got = compare(dict(enumerate(better)), dict(enumerate(worse)), "snr", "ideal", ("a", "b"))
    peer = stats.ttest_rel(better, worse)
    assert got.p_value == pytest.approx(float(peer.pvalue), rel=1e-9)
    assert got.verdict == verdict
    diffs = [b - w for b, w in zip(better, worse, strict=True)]
    assert got.difference.mean == pytest.approx(statistics.fmean(diffs), abs=1e-15)


def test_one_seed_or_no_difference_resolves_nothing():
    assert compare({0: 0.5}, {0: 0.1}, "snr", "ideal", ("a", "b")).verdict == "not resolved"
    same = compare({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6}, "snr", "ideal", ("a", "b"))
    assert same.verdict == "not resolved" and math.isnan(same.p_value)
    only_shared = compare({0: 0.9, 1: 0.8, 2: 0.7}, {1: 0.1, 2: 0.2}, "snr", "ideal", ("a", "b"))
    assert only_shared.difference.n == 2  # seeds both defenses ran


def _row(defense: str, seed: int, value: float, tasks=("signs", "textures"), link="snr"):
    cfg = ExperimentConfig(tasks=tasks, link=link, scenario="ideal", defense=defense, seed=seed)
    result = RunResult(
        accuracy={},
        normalized=value,
        chance=0.1,
        mse=(),
        error_mse=(),
        received_cosine=(),
        dropped_users=(),
        nonfinite_entries=0,
    )
    role = "clean" if link == "noiseless" else "ablation"
    return RunRecord(role=role, config=cfg, result=result, seconds=0.0)


def test_cells_average_subsets_within_a_seed_then_seeds():
    rm = {0: (0.5, 0.7), 1: (0.6, 0.6), 2: (0.4, 0.6)}  # two subsets per seed
    rows = [
        _row("r-mtllmf", s, v, tasks=t)
        for s, pair in rm.items()
        for v, t in zip(pair, (("signs", "textures"), ("digits", "letters")), strict=True)
    ]
    rows += [_row("none", s, 0.1 * s) for s in rm]
    rows += [_row("none", s, 0.8, link="noiseless") for s in rm]
    unc = uncertainty(rows, 2)
    cell = unc.by_link["snr"]["ideal"]["r-mtllmf"]
    assert cell.n == 3 and cell.mean == pytest.approx(statistics.fmean([0.6, 0.6, 0.5]))
    assert unc.clean.mean == pytest.approx(0.8) and unc.seeds == [0, 1, 2]
    (comparison,) = unc.comparisons  # realign, freeze, shrink... did not run: only vs none
    assert (comparison.better, comparison.worse) == ("r-mtllmf", "none")
    assert comparison.verdict == "holds"
    text = "\n".join(markdown._uncertainty(unc))
    assert "r-mtllmf > none" in text and "holds" in text and "3 seed(s)" in text
    one = uncertainty([r for r in rows if r.config.seed == 0], 2)
    assert "One seed" in "\n".join(markdown._uncertainty(one))
