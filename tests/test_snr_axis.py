"""The SNR axis: the awgn scenario's noise law, the axis's plan, its report and its limits."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rmtllmf.channel import PAPER_SIGNAL_POWER
from rmtllmf.defense import RealignConfig
from rmtllmf.errors import InputError
from rmtllmf.fusion import MergeConfig
from rmtllmf.report.axis_report import AXIS_ROLES, Band, axis_report
from rmtllmf.report.seeds import Interval
from rmtllmf.study.analysis import AnalysisConfig
from rmtllmf.study.experiment import ExperimentConfig, awgn_mse, channel_mse, receive
from rmtllmf.study.plan import SweepConfig, plan_runs
from rmtllmf.study.snr_axis import PAPER_POINTS, SnrAxisConfig, signal_power
from rmtllmf.study.store import ResultsDB
from rmtllmf.study.sweep import run_sweep

TASKS = ("signs", "textures", "counting")


@given(st.floats(-60, 60), st.sampled_from(["snr", "snr-tensor", "relative", "weights"]))
def test_awgn_mse_gives_the_asked_per_entry_snr(snr_db, link):
    mu = awgn_mse(link, snr_db)
    # the snr link's noise is mu E[tau^2] / S_ref, the relative links' mu E[x^2] (eq. 9 scaled)
    per_entry_noise_over_signal = mu / PAPER_SIGNAL_POWER if link.startswith("snr") else mu
    assert math.isclose(-10 * math.log10(per_entry_noise_over_signal), snr_db, abs_tol=1e-9)


def test_paper_points_are_the_papers_mses_on_the_snr_axis():
    # S_ref / mu in dB at the paper's reported mean MSEs; -16.2 dB at 0.013 by S_ref's definition
    assert PAPER_POINTS["ideal"] == pytest.approx(-16.2, abs=0.01)
    assert PAPER_POINTS["sum-rate"] == pytest.approx(
        -16.2 + 10 * math.log10(0.013 / 0.21), abs=0.01
    )
    assert PAPER_POINTS["strongest-user"] == pytest.approx(
        -16.2 + 10 * math.log10(0.013 / 0.16), abs=0.01
    )


@pytest.mark.parametrize("snr_db", [-20.0, 0.0, 20.0])
def test_received_noise_has_the_asked_snr(tiny_zoo, snr_db):
    cfg = ExperimentConfig(tasks=TASKS, scenario="awgn", link="snr", snr_db=snr_db, seed=3)
    mu, channel = channel_mse(cfg, np.random.default_rng(0))
    assert channel is None and np.allclose(mu, awgn_mse("snr", snr_db))
    rx = receive(tiny_zoo, cfg)
    for clean, error in zip(rx.clean, rx.error_mse, strict=True):
        power = float(np.mean(clean.flatten().astype(np.float64) ** 2))
        measured = 10 * math.log10(power / error)
        # mean of d squared normals: relative sd sqrt(2 / d), here well under 0.1 dB
        assert measured == pytest.approx(snr_db, abs=0.1)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scenario": "awgn", "link": "snr"}, "give both scenario 'awgn' and snr_db"),
        ({"scenario": "ideal", "link": "snr", "snr_db": 0.0}, "give both scenario 'awgn'"),
        ({"scenario": "awgn", "link": "absolute", "snr_db": 0.0}, "not the absolute link"),
        ({"scenario": "awgn", "link": "symbol", "snr_db": 0.0}, "not the symbol link"),
    ],
)
def test_awgn_needs_its_snr_and_a_power_scaled_link(fields, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig(tasks=TASKS, **fields)


def _sweep(**update) -> SweepConfig:
    cfg = SweepConfig(
        tasks=TASKS,
        task_counts=(2, 3),
        scenarios=("ideal", "sum-rate"),
        links=("snr", "absolute"),
        k_values=(1, 2),
        seeds=(0,),
        headline_seeds=(1, 2),
        extra_defenses=("shrink",),
        realign=RealignConfig(k_per_class=2, steps=2, batch=8),
        analysis=AnalysisConfig(samples=8, probes=1),
        lambda_grid=(0.0, 0.5, 1.0),
        spectra=None,
        snr_axis=SnrAxisConfig(snr_db=(-10.0, 0.0, 10.0), jnr_db=(0.0, 20.0)),
    )
    return cfg.model_copy(update=update)


def test_plan_of_the_axis_and_of_the_headline_seeds():
    cfg = _sweep()
    runs = plan_runs(cfg, {2: 0.5, 3: 0.3})
    keys = [r.config.model_dump_json() for r in runs]
    assert len(keys) == len(set(keys))
    roles = Counter((r.role, r.config.seed) for r in runs)
    defenses = 5  # the paper's four and shrink
    # per seed: 3 SNR points x 5 defenses, and the 3 not in the clean runs on the noiseless link
    assert all(roles[("snr-axis", s)] == 3 * defenses + 3 for s in (0, 1, 2))
    assert all(roles[("jammer-axis", s)] == 2 * defenses for s in (0, 1, 2))
    # headline seeds: the largest N's ablation on the first link only, no k sweep, no N = 2
    ablation = [r for r in runs if r.role == "ablation"]
    assert {r.config.link for r in ablation if r.config.seed > 0} == {"snr"}
    assert {r.config.seed for r in runs if r.role == "kshot"} == {0}
    assert {r.config.seed for r in runs if len(r.config.tasks) == 2} == {0}
    assert sum(r.config.seed == 1 for r in ablation) == 2 * defenses  # two scenarios
    jammed = [r.config for r in runs if r.role == "jammer-axis"]
    assert {c.channel.jnr_db for c in jammed} == {0.0, 20.0}
    assert {c.scenario for c in jammed} == {"sum-rate"} and {c.link for c in jammed} == {"snr"}


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"scenarios": ("awgn",)}, "snr_axis"),
        ({"headline_seeds": (0,)}, "distinct"),
        ({"snr_axis": SnrAxisConfig(snr_db=(1.0, 1.0))}, "repeats"),
        ({"snr_axis": SnrAxisConfig(snr_db=(), jnr_db=())}, "neither"),
        ({"snr_axis": SnrAxisConfig(defenses=("svd",))}, "do not run in this sweep"),
    ],
)
def test_bad_axes_are_clear_errors(update, message):
    with pytest.raises(InputError, match=message):
        _sweep(**update).check()


def test_band_text_joins_consecutive_grid_points():
    grid = [-40.0, -35.0, -30.0, -25.0, -20.0]
    assert Band("none", 0.1, [], grid).text == "no such band"
    assert Band("none", 0.1, [-35.0, -30.0, -20.0], grid).text == "-35 to -30 dB, -20 dB"
    assert Band("none", 0.1, grid, grid).text == "-40 to -20 dB"


def test_signal_power_is_the_mean_squares_of_weights_and_task_vectors(tiny_zoo):
    power = signal_power(tiny_zoo, TASKS)
    base = tiny_zoo.base_state
    weights = np.concatenate([base[k].numpy().ravel() for k in base]).astype(np.float64)
    taus = [
        np.concatenate([(tiny_zoo.finetuned[t][k] - base[k]).numpy().ravel() for k in base]).astype(
            np.float64
        )
        for t in TASKS
    ]
    assert power["weights"] == pytest.approx(np.mean(weights**2), rel=1e-6)
    assert power["task_vectors"] == pytest.approx(np.mean([np.mean(x**2) for x in taus]), rel=1e-6)
    shift = 10 * math.log10(power["weights"] / power["task_vectors"])
    assert power["weights_shift_db"] == pytest.approx(shift)


def test_limits_of_the_axis(tiny_zoo, tmp_path):
    """At a very high SNR every defense equals itself on the noiseless link; at a very low one
    the undefended merge is at chance and shrink at the base model alone (three seeds)."""
    cfg = SweepConfig(
        tasks=TASKS,
        task_counts=(3,),
        scenarios=("ideal",),
        links=("snr",),
        k_values=(2,),
        seeds=(0, 1, 2),
        extra_defenses=("shrink",),
        realign=RealignConfig(k_per_class=2, steps=4, batch=8, validate_every=0),
        analysis=AnalysisConfig(samples=8, probes=1),
        lambda_grid=(1.0,),
        spectra=None,
        snr_axis=SnrAxisConfig(snr_db=(-90.0, 90.0)),
    )
    db = ResultsDB(tmp_path / "r.db")
    run_sweep(tiny_zoo, "tiny", cfg, db)
    rows = list(db.rows())
    axis = axis_report(rows)
    assert axis is not None
    limits = {(lim.snr_db, lim.defense): lim for lim in axis.limits}
    assert {d for x, d in limits if x == 90.0} == {
        "none",
        "freeze",
        "realign",
        "r-mtllmf",
        "shrink",
    }
    assert limits[(-90.0, "none")].reference == "chance"
    assert limits[(-90.0, "shrink")].reference == "base"
    failed = [(k, lim.difference) for k, lim in limits.items() if not lim.reached]
    assert not failed
    # the noise at -90 dB is 1e9 times the task vectors' power: what was received is noise
    low = [r for r in rows if r.config.snr_db == -90.0 and r.config.defense == "none"]
    power = signal_power(tiny_zoo, TASKS)["task_vectors"]
    assert low and all(min(r.result.error_mse) > 1e8 * power / 3 for r in low)
    assert all(r.role in (*AXIS_ROLES, "clean", "ablation", "kshot") for r in rows)


def test_limits_fail_where_they_do_not_hold():
    from rmtllmf.report.axis_report import _equal

    assert _equal(Interval(0.005, 0.005, 0.005, 3))
    assert _equal(Interval(0.05, -0.01, 0.11, 3))
    assert not _equal(Interval(0.05, 0.02, 0.08, 3))
    assert not _equal(Interval(0.05, 0.05, 0.05, 1))


def test_merge_scaling_is_shared_by_the_axis(tiny_zoo):
    cfg = _sweep()
    runs = plan_runs(cfg, {2: 0.5, 3: 0.3})
    scalings = {r.config.merge.scaling for r in runs if r.role in AXIS_ROLES}
    assert scalings == {0.3}
    assert all(r.config.merge == MergeConfig(scaling=0.3) for r in runs if r.role in AXIS_ROLES)
