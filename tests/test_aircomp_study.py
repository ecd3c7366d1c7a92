"""The AirComp link in a run and in the plan: what it delivers, what it refuses."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from rmtllmf.errors import InputError
from rmtllmf.fusion import MergeConfig
from rmtllmf.study.analysis import AnalysisConfig
from rmtllmf.study.experiment import ExperimentConfig, receive, run_experiment
from rmtllmf.study.plan import SweepConfig, plan_runs
from rmtllmf.study.store import RunResult

TASKS = ("signs", "textures", "counting")


def test_aircomp_run_merges_the_received_sum(tiny_zoo):
    cfg = ExperimentConfig(
        tasks=TASKS, scenario="sum-rate", link="aircomp", merge=MergeConfig(scaling=0.4)
    )
    rx = receive(tiny_zoo, cfg)
    assert rx.aircomp is not None
    assert len(rx.received) == 1
    base = tiny_zoo.base_state
    merged = rx.merged(base, cfg.merge)
    ((_, total),) = rx.received
    for key, tensor in total.tensors.items():
        torch.testing.assert_close(merged[key], base[key] + 0.4 * tensor)
    # the estimate's error is what the design promised, up to the symbols' power (module docs
    # of rmtllmf.channel.aircomp_link): on the snr link the noise m^H C m is a floor of it
    clean_sum = sum(c.flatten().astype(np.float64) for c in rx.clean)
    error = total.flatten() - clean_sum
    assert rx.uplink["nmse"] == pytest.approx(
        float(np.dot(error, error) / np.dot(clean_sum, clean_sum)), rel=1e-6
    )
    assert np.mean(error**2) >= 0.9 * rx.aircomp.noise_power.min()
    assert 0 < rx.uplink["energy"] <= 1
    result = run_experiment(tiny_zoo, cfg, rx)
    assert result.dropped_users == []
    assert result.uplink == rx.uplink
    assert RunResult.from_json(RunResult.from_experiment(result).to_json()).uplink == rx.uplink


def test_sic_and_aircomp_meet_the_same_jammer(tiny_zoo):
    """The AirComp jammers' covariance does not depend on the link: the SIC users' MSEs of the
    snr link and of the aircomp link's channel draw are equal."""
    snr = receive(tiny_zoo, ExperimentConfig(tasks=TASKS, scenario="aircomp-maxmin", link="snr"))
    air = receive(
        tiny_zoo, ExperimentConfig(tasks=TASKS, scenario="aircomp-maxmin", link="aircomp")
    )
    np.testing.assert_array_equal(snr.mse, air.mse)
    assert snr.uplink["energy"] == 1.0
    s_ref = 0.013 * 10 ** (-16.2 / 10)  # the paper's ideal SNR at its MSE, sec. IV
    assert snr.uplink["sum_mse"] == pytest.approx(
        sum(
            mu * np.mean(c.flatten().astype(np.float64) ** 2) / s_ref
            for mu, c in zip(snr.mse, snr.clean, strict=True)
        ),
        rel=1e-9,
    )


@pytest.mark.parametrize(
    ("update", "match"),
    [
        ({"merge": MergeConfig(method="ties", scaling=0.3)}, "needs each one"),
        ({"defense": "median"}, "cannot run on it"),
        ({"defense": "gate"}, "cannot run on it"),
        ({"scenario": "paper-ideal"}, "physical scenario"),
        ({"analysis": AnalysisConfig(samples=4, probes=1)}, "analysis"),
    ],
)
def test_aircomp_refuses_what_needs_each_user(tiny_zoo, update, match):
    cfg = ExperimentConfig(tasks=TASKS, scenario="ideal", link="aircomp").model_copy(update=update)
    with pytest.raises(InputError, match=match):
        run_experiment(tiny_zoo, cfg)


def test_plan_runs_aircomp_with_what_applies():
    cfg = SweepConfig(
        tasks=TASKS,
        task_counts=(3,),
        scenarios=("ideal", "aircomp-maxmin", "paper-ideal"),
        links=("snr", "aircomp"),
        extra_defenses=("shrink", "median"),
        k_values=(1,),
    )
    runs = plan_runs(cfg, {3: 0.3})
    air = [r.config for r in runs if r.config.link == "aircomp"]
    assert air
    assert {c.scenario for c in air} == {"ideal", "aircomp-maxmin"}
    assert "median" not in {c.defense for c in air}
    assert "shrink" in {c.defense for c in air}
    assert all(c.analysis is None for c in air)
    snr_none = [r.config for r in runs if r.role == "ablation" and r.config.link == "snr"]
    assert any(c.analysis is not None for c in snr_none)
    with pytest.raises(InputError, match="needs each one"):
        plan_runs(cfg.model_copy(update={"merge_method": "ties"}), {3: 0.3})


def test_channel_cli_sets_the_receivers_side_by_side(capsys):
    from rmtllmf.cli import main

    args = ["channel", "--scenario", "aircomp-maxmin", "--users", "4", "--antennas", "6"]
    assert main([*args, "--aircomp", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    air = out["aircomp"]
    assert air["sic_sum_mse"] == pytest.approx(sum(u["mse"] for u in out["users"]))
    assert air["aircomp_mse"] <= air["aircomp_zf_mse"]
    assert 0 < air["aircomp_energy"] <= 1
    assert main(["channel", "--users", "1", "--aircomp", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)["aircomp"]
    assert one["aircomp_mse"] == pytest.approx(one["sic_sum_mse"], rel=1e-7)  # eq. 5
    assert main([*args, "--antennas", "1000", "--aircomp"]) == 2
    assert "fewer antennas" in capsys.readouterr().err


def test_jammer_axis_runs_aircomp_beside_sic():
    from rmtllmf.channel import ScenarioConfig
    from rmtllmf.study.snr_axis import SnrAxisConfig, axis_runs

    axis = SnrAxisConfig(snr_db=(), jnr_db=(0.0, 10.0), jammer_links=("snr", "aircomp"))
    axis.check(("none", "r-mtllmf", "median"))
    common = {"tasks": TASKS, "channel": ScenarioConfig(), "seed": 0}
    runs = [
        c
        for role, c in axis_runs(axis, ("none", "r-mtllmf", "median"), common)
        if role == "jammer-axis"
    ]
    by_link = {
        lk: {(c.defense, c.channel.jnr_db) for c in runs if c.link == lk}
        for lk in ("snr", "aircomp")
    }
    assert by_link["snr"] == {(d, j) for d in ("none", "r-mtllmf", "median") for j in (0.0, 10.0)}
    assert by_link["aircomp"] == {(d, j) for d in ("none", "r-mtllmf") for j in (0.0, 10.0)}
    with pytest.raises(InputError, match="jammer_links"):
        SnrAxisConfig(jnr_db=(0.0,), jammer_links=("symbol",)).check(("none",))


def test_sweep_and_report_set_the_receivers_side_by_side(tiny_zoo, tmp_path):
    from rmtllmf.defense import RealignConfig
    from rmtllmf.report import write_report
    from rmtllmf.study.store import ResultsDB
    from rmtllmf.study.sweep import run_sweep

    cfg = SweepConfig(
        tasks=TASKS,
        task_counts=(3,),
        scenarios=("ideal", "aircomp-aligned"),
        links=("snr", "aircomp"),
        seeds=(0, 1),
        k_values=(2,),
        realign=RealignConfig(k_per_class=2, steps=2, batch=8),
        analysis=AnalysisConfig(samples=4, probes=1),
        lambda_grid=(0.0, 0.5),
        spectra=None,
    )
    db = ResultsDB(tmp_path / "r.db")
    run_sweep(tiny_zoo, "zoo", cfg, db)
    summary = write_report(db, tmp_path / "report")
    rows = summary["receivers"]
    assert {(r["scenario"], r["link"]) for r in rows} == {
        (s, lk) for s in ("ideal", "aircomp-aligned") for lk in ("snr", "aircomp")
    }
    air = next(r for r in rows if r["link"] == "aircomp" and r["scenario"] == "ideal")
    assert air["nmse"]["n"] == 2
    assert 0 < air["energy"] <= 1
    assert set(air["versus_sic"]) == {"none", "freeze", "realign", "r-mtllmf"}
    text = (tmp_path / "report" / "report.md").read_text()
    assert "MMSE-SIC against AirComp" in text
    assert "AirComp minus MMSE-SIC" in text
    with (tmp_path / "report" / "runs.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert {t["error_mse"] for t in table if t["link"] == "aircomp"} == {""}
