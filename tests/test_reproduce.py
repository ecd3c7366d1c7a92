"""`rmtllmf reproduce` on the embedded family with a tiny zoo: outputs, resumption, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import tiny_zoo_config
from rmtllmf.app.reproduce import load_config, quick_config, reproduce, sweep_config
from rmtllmf.cli import main
from rmtllmf.study.store import ResultsDB

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture
def study(tmp_path):
    cfg = {
        "family": "tiny-vit",
        "zoo": tiny_zoo_config(tmp_path, ("signs", "textures")).model_dump(mode="json"),
        "sweep": {
            "task_counts": [1, 2],
            "scenarios": ["ideal", "strongest-user"],
            "links": ["relative", "weights"],
            "k_values": [1],
            "realign": {"k_per_class": 2, "steps": 2, "batch": 8},
            "analysis": {"samples": 4, "probes": 1},
            "lambda_grid": [0.0, 0.5],
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_reproduce_writes_everything_and_resumes(study, tmp_path, capsys):
    argv = ["reproduce", "--config", str(study), "--out", str(tmp_path / "out")]
    argv += ["--cache", str(tmp_path / "cache"), "--threads", "1"]
    assert main([*argv, "--max-runs", "5"]) == 0
    assert len(ResultsDB(tmp_path / "out" / "results.db").done()) == 5
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Normalized accuracy at N = 2" in out and "weights" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    n_runs = len(ResultsDB(tmp_path / "out" / "results.db").done())
    assert main(argv) == 0  # nothing left to run: same numbers
    assert (
        json.loads((tmp_path / "out" / "summary.json").read_text())["by_link"] == summary["by_link"]
    )
    assert len(ResultsDB(tmp_path / "out" / "results.db").done()) == n_runs
    for name in ("report.md", "runs.csv", "config.json", "fig2_accuracy_vs_tasks.pdf"):
        assert (tmp_path / "out" / name).exists()


def test_quick_covers_every_link_scenario_and_defense():
    sweep = sweep_config(quick_config())
    assert sweep.task_counts == (2, 4, 8) and sweep.subsets_per_count == 1
    assert set(sweep.links) == {"snr", "absolute", "relative", "weights", "symbol"}
    assert sweep.links[0] == "snr"  # the headline link: the k sweep runs on it
    assert set(sweep.scenarios) == {"ideal", "sum-rate", "strongest-user"}
    assert len(sweep.tasks) == 8
    # the receiver defenses that need no labels, on the headline link, at every N
    from rmtllmf.study.plan import plan_runs, spectra_receptions

    lambdas = dict.fromkeys(sweep.task_counts, 0.5)
    runs = plan_runs(sweep, lambdas)
    extra = {(len(r.config.tasks), r.config.link, r.config.defense) for r in runs}
    for n in sweep.task_counts:
        assert {(n, "snr", "shrink"), (n, "snr", "svd")} <= extra
    assert not any(d in ("shrink", "svd") for _, link, d in extra if link != "snr")
    assert {r.link for r in spectra_receptions(sweep, lambdas)} == {"snr", "weights"}
    # five seeds for the N = 8 ablation on the headline link, one for everything else
    headline = {r.config.seed for r in runs if r.role == "ablation" and r.config.link == "snr"}
    assert headline == {0, 1, 2, 3, 4}
    others = {r.config.seed for r in runs if r.role != "clean" and r.config.link != "snr"}
    assert others == {0}


def test_reproduce_bad_input(study, tmp_path, capsys):
    assert main(["reproduce", "--quick", "--config", str(study)]) == 2
    assert "drop --config or --quick" in capsys.readouterr().err
    assert main(["reproduce", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_sigkill_mid_sweep_then_rerun_gives_the_same_numbers(study, tmp_path):
    """Kill -9 the process while it writes results; the rerun finishes to identical numbers."""
    import signal
    import subprocess
    import sys
    import time

    def argv(out):
        return [sys.executable, "-m", "rmtllmf.cli", "reproduce", "--config", str(study),
                "--out", str(out), "--cache", str(tmp_path / "cache"), "--workers", "1",
                "--threads", "1"]  # fmt: skip

    subprocess.run(argv(tmp_path / "reference"), check=True, capture_output=True)
    proc = subprocess.Popen(
        argv(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    db_file = tmp_path / "killed" / "results.db"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if db_file.exists() and len(ResultsDB(db_file).done()) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    kept = len(ResultsDB(db_file).done())
    assert kept >= 3
    subprocess.run(argv(tmp_path / "killed"), check=True, capture_output=True)

    def numbers(out):
        return {r.config.model_dump_json(): r.result for r in ResultsDB(out / "results.db").rows()}

    assert numbers(tmp_path / "killed") == numbers(tmp_path / "reference")


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_resolves(name):
    cfg = load_config(CONFIGS / name)
    sweep = sweep_config(cfg)
    assert sweep.tasks and sweep.task_counts and sweep.links


def test_paper_mse_config_runs_on_a_tiny_zoo(tmp_path):
    paper = load_config(CONFIGS / "embedded-paper-mse.yaml")
    zoo = tiny_zoo_config(tmp_path, ("signs", "textures"))
    tiny = {"task_counts": [2], "k_values": [1], "lambda_grid": [0.0, 0.5]}
    tiny |= {"realign": {"k_per_class": 2, "steps": 2, "batch": 8}}
    tiny |= {"analysis": {"samples": 4, "probes": 1}}
    cfg = paper.model_copy(update={"zoo": zoo, "sweep": {**paper.sweep, **tiny}})
    summary = reproduce(cfg, tmp_path / "out", cache=tmp_path / "cache", progress=False)
    assert set(summary["by_link"]["absolute"]) == {
        "paper-ideal",
        "paper-sum-rate",
        "paper-strongest-user",
    }


def test_snr_config_runs_on_a_tiny_zoo_and_reports_its_axis(tmp_path):
    snr = load_config(CONFIGS / "embedded-snr.yaml")
    zoo = tiny_zoo_config(tmp_path, ("signs", "textures"))
    tiny = {"task_counts": [2], "k_values": [2], "lambda_grid": [0.0, 0.5], "seeds": [0, 1]}
    tiny |= {"realign": {"k_per_class": 2, "steps": 2, "batch": 8}}
    tiny |= {"analysis": {"samples": 4, "probes": 1}}
    tiny |= {"snr_axis": {"snr_db": [-30, 0, 30], "jnr_db": [0, 20]}}
    cfg = snr.model_copy(update={"zoo": zoo, "sweep": {**snr.sweep, **tiny}})
    summary = reproduce(cfg, tmp_path / "out", cache=tmp_path / "cache", progress=False)
    axis = summary["snr_axis"]
    assert set(axis["snr"]) == {
        "none",
        "freeze",
        "realign",
        "r-mtllmf",
        "shrink",
        "svd",
        "svd+r-mtllmf",
    }
    assert [p["snr_db"] for p in axis["snr"]["none"]] == [-30, 0, 30]
    assert all(p["n"] == 2 for p in axis["snr"]["r-mtllmf"])
    assert [p["jnr_db"] for p in axis["jammer"]["sum-rate"]["none"]] == [0, 20]
    assert {b["versus"] for b in axis["bands"]} == {"none", "base", "shrink"}
    assert axis["weights_shift_db"] > 0  # weights carry more power than task vectors
    assert "snr_axis.png" in summary["figures"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## The SNR axis" in report and "R-MTLLMF beats" in report
    # the axis's runs stay out of the ablation's tables
    assert set(summary["by_link"]["snr"]) == {"sum-rate"}
