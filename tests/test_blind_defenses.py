"""Receiver defenses that need no labels, against theory and peer code.

* SVD denoising recovers a planted low-rank matrix in i.i.d. noise of known variance with the
  error of a rank-r fit, ``sigma^2 r (m + n - r)``, and keeps nothing of pure noise;
* Wiener shrinkage lowers the error to the clean vector to ``d s sigma^2 / (s + sigma^2)``;
* the robust aggregators equal numpy's median and scipy's trimmed mean;
* the BS's noise-variance estimate matches what the statistical link added, on every scale.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from conftest import build_tiny_zoo
from rmtllmf.channel import PAPER_SIGNAL_POWER, noise_variance, transmit_statistical
from rmtllmf.defense import DEFENSES, blind_defense
from rmtllmf.defense.blind import (
    coordinate_median,
    gate_users,
    gavish_donoho_lambda,
    svd_denoise,
    trimmed_mean,
    wiener_shrink,
)
from rmtllmf.errors import InputError
from rmtllmf.fusion import MergeConfig, TaskVector, VectorLayout, merge_task_vectors
from rmtllmf.study.clean_merge import task_vectors
from rmtllmf.study.experiment import ExperimentConfig, receive, run_experiment
from rmtllmf.study.plan import SweepConfig, plan_runs

TASKS = ("signs", "counting")


def test_gavish_donoho_threshold_for_square_matrices():
    """Gavish & Donoho (2014): lambda*(1) = 4 / sqrt(3)."""
    assert gavish_donoho_lambda(1.0) == pytest.approx(4 / math.sqrt(3))
    assert gavish_donoho_lambda(0.25) < gavish_donoho_lambda(1.0)


def test_svd_recovers_a_planted_low_rank_matrix_with_the_rank_r_error():
    rng = np.random.default_rng(0)
    m, n, r, sigma = 96, 300, 3, 0.05
    errors, raw = [], []
    for _ in range(12):
        u = np.linalg.qr(rng.standard_normal((m, r)))[0]
        v = np.linalg.qr(rng.standard_normal((n, r)))[0]
        x = (u * (np.array([12.0, 9.0, 7.0]) * sigma * math.sqrt(n))) @ v.T
        y = x + sigma * rng.standard_normal((m, n))
        errors.append(np.sum((svd_denoise(y, sigma) - x) ** 2))
        raw.append(np.sum((y - x) ** 2))
    assert np.mean(errors) == pytest.approx(sigma**2 * r * (m + n - r), rel=0.15)
    assert np.mean(errors) < 0.05 * np.mean(raw)
    noise = sigma * rng.standard_normal((m, n))
    assert np.count_nonzero(svd_denoise(noise, sigma)) == 0  # nothing rises above the edge


def test_wiener_shrinkage_reaches_its_closed_form_error():
    rng = np.random.default_rng(1)
    d, var = 20_000, 0.2
    tau = rng.standard_normal(d) * 0.3
    r = tau + math.sqrt(var) * rng.standard_normal(d)
    shrunk = wiener_shrink(r, var, [0, d])
    s = float(np.mean(tau**2))
    assert np.sum((shrunk - tau) ** 2) == pytest.approx(d * s * var / (s + var), rel=0.05)
    np.testing.assert_array_equal(wiener_shrink(r, 0.0, [0, d]), r.astype(np.float32))
    with pytest.raises(InputError, match="segments"):
        wiener_shrink(r, var, [0, d - 1])


def test_robust_aggregators_equal_numpy_and_scipy():
    rng = np.random.default_rng(2)
    vectors = [rng.standard_normal(500) for _ in range(7)]
    np.testing.assert_allclose(coordinate_median(vectors), np.median(vectors, axis=0), atol=1e-6)
    for trim in (0.0, 0.15, 0.3):
        expected = scipy.stats.trim_mean(np.stack(vectors), trim, axis=0)
        np.testing.assert_allclose(trimmed_mean(vectors, trim), expected, atol=1e-6)


def test_gate_keeps_the_users_above_the_snr_threshold():
    rng = np.random.default_rng(3)
    tau = rng.standard_normal(4000)
    strong = tau + 0.3 * rng.standard_normal(4000)  # SNR about 11
    weak = tau + 3.0 * rng.standard_normal(4000)  # SNR about 0.11
    keep = gate_users([strong, weak], [np.array([0.09]), np.array([9.0])], [0, 4000], 1.0)
    assert keep == [0]


@pytest.mark.parametrize(
    ("scale", "per_segment"),
    [("absolute", False), ("relative", False), ("snr", False), ("snr", True)],
)
def test_noise_variance_estimates_what_the_link_added(scale, per_segment):
    rng = np.random.default_rng(4)
    seg = np.array([0, 30_000, 50_000])
    x = np.concatenate([0.01 * rng.standard_normal(30_000), 0.05 * rng.standard_normal(20_000)])
    mu = 0.2
    (r,) = transmit_statistical(
        [x.astype(np.float32)], [mu], rng, scale=scale, segments=[seg], per_segment=per_segment
    )
    estimate = noise_variance(r, mu, scale=scale, segments=seg, per_segment=per_segment)
    added = [np.mean((r - x)[seg[j] : seg[j + 1]] ** 2) for j in range(2)]
    power = [np.mean(x[seg[j] : seg[j + 1]] ** 2) for j in range(2)]
    whole = np.mean(x**2)
    expected = {
        "absolute": [mu, mu],
        "relative": [mu * p for p in power],
        "snr": [mu * (p if per_segment else whole) / PAPER_SIGNAL_POWER for p in power],
    }[scale]
    np.testing.assert_allclose(estimate, expected, rtol=0.05)  # closed form of the link
    np.testing.assert_allclose(estimate, added, rtol=0.05)  # what was added


def test_weights_link_estimate_uses_the_base_offset():
    rng = np.random.default_rng(5)
    theta = rng.standard_normal(40_000)
    tau = 0.01 * rng.standard_normal(40_000)
    (sent,) = transmit_statistical([(theta + tau).astype(np.float32)], [0.1], rng, scale="relative")
    estimate = noise_variance(sent - theta, 0.1, scale="relative", offset=theta)
    assert estimate[0] == pytest.approx(np.mean((sent - theta - tau) ** 2), rel=0.05)


def test_blind_defense_stages():
    layout = VectorLayout(("w", "b"), ((20, 30), (30,)))
    rng = np.random.default_rng(6)
    flats = [rng.standard_normal(layout.total).astype(np.float32) for _ in range(5)]
    noise = [np.zeros(2) for _ in flats]
    (median,) = blind_defense(flats, noise, layout, DEFENSES["median"])
    np.testing.assert_allclose(median, 5 * np.median(flats, axis=0), rtol=1e-6)
    same = blind_defense(flats, noise, layout, DEFENSES["svd"])
    for a, b in zip(same, flats, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # no noise: nothing removed
    loud = [np.full(2, 100.0) for _ in flats]
    assert blind_defense(flats, loud, layout, DEFENSES["gate"]) == []


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_tiny_zoo(tmp_path_factory.mktemp("zoo"), TASKS)


def test_receiver_defenses_in_runs(zoo):
    clean = ExperimentConfig(tasks=TASKS, link="noiseless", merge=MergeConfig(scaling=0.5))
    none = run_experiment(zoo, clean)
    for name in ("shrink", "svd", "gate"):
        assert run_experiment(zoo, clean.model_copy(update={"defense": name})).accuracy == (
            none.accuracy
        )
    median = run_experiment(zoo, clean.model_copy(update={"defense": "median"}))
    tvs = task_vectors(zoo, TASKS)
    flats = np.stack([tv.flatten() for tv in tvs])
    robust = (len(TASKS) * np.median(flats, axis=0)).astype(np.float32)
    merged = merge_task_vectors(
        zoo.base_state, [TaskVector.from_flat(robust, tvs[0].layout)], clean.merge
    )
    assert median.accuracy == zoo.task_accuracy(merged, TASKS)
    jammed = ExperimentConfig(tasks=TASKS, scenario="paper-sum-rate", link="snr")
    rx = receive(zoo, jammed)
    gated = run_experiment(zoo, jammed.model_copy(update={"defense": "gate"}), rx)
    base = run_experiment(zoo, jammed.model_copy(update={"defense": "base"}), rx)
    assert gated.accuracy == base.accuracy  # -28 dB per entry: every user is dropped
    with pytest.raises(InputError, match="analog link"):
        run_experiment(zoo, ExperimentConfig(tasks=TASKS, link="symbol", defense="shrink"))


def test_sweep_runs_extra_defenses_where_they_apply():
    cfg = SweepConfig(
        tasks=TASKS,
        task_counts=(2,),
        links=("snr", "symbol"),
        extra_defenses=("shrink", "svd+r-mtllmf"),
        k_values=(1, 10),
    )
    runs = plan_runs(cfg, {2: 0.3})
    ablation = {(r.config.link, r.config.defense) for r in runs if r.role == "ablation"}
    assert ("snr", "shrink") in ablation and ("snr", "svd+r-mtllmf") in ablation
    assert ("symbol", "shrink") not in ablation and ("symbol", "r-mtllmf") in ablation
    kshot = {(r.config.defense, r.config.realign.k_per_class) for r in runs if r.role == "kshot"}
    assert kshot == {("r-mtllmf", 1), ("svd+r-mtllmf", 1)}
    with pytest.raises(InputError, match="extra_defenses"):
        SweepConfig(tasks=TASKS, task_counts=(2,), extra_defenses=("freeze",)).check()


def test_extra_defenses_run_at_every_n_on_their_links():
    three = ("signs", "textures", "counting")
    cfg = SweepConfig(
        tasks=three,
        task_counts=(2, 3),
        links=("snr", "weights", "symbol"),
        extra_defenses=("shrink", "svd+r-mtllmf"),
        k_values=(1, 10),
    )
    runs = plan_runs(cfg, {2: 0.3, 3: 0.2})
    fig2 = {(r.config.link, r.config.defense) for r in runs if r.role == "fig2"}
    assert {("snr", "shrink"), ("weights", "svd+r-mtllmf"), ("symbol", "r-mtllmf")} <= fig2
    assert ("symbol", "shrink") not in fig2
    only = cfg.model_copy(update={"extra_defense_links": ("snr",)})
    runs = plan_runs(only, {2: 0.3, 3: 0.2})
    extra = {(r.role, r.config.link) for r in runs if r.config.defense in cfg.extra_defenses}
    assert extra == {("fig2", "snr"), ("ablation", "snr"), ("kshot", "snr")}
    elsewhere = only.model_copy(update={"extra_defense_links": ("weights",)})
    kshot = {r.config.defense for r in plan_runs(elsewhere, {2: 0.3, 3: 0.2}) if r.role == "kshot"}
    assert kshot == {"r-mtllmf"}  # the k sweep's link (snr) runs no extra defense
