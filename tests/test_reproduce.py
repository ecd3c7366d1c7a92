"""`rmtllmf reproduce` on the embedded family with a tiny zoo: outputs, resumption, errors."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import tiny_zoo_config
from rmtllmf.cli import main
from rmtllmf.reproduce import quick_config, sweep_config
from rmtllmf.sweep import ResultsDB


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
    assert set(sweep.links) == {"absolute", "relative", "weights", "symbol"}
    assert set(sweep.scenarios) == {"ideal", "sum-rate", "strongest-user"}
    assert len(sweep.tasks) == 8


def test_reproduce_bad_input(study, tmp_path, capsys):
    assert main(["reproduce", "--quick", "--config", str(study)]) == 2
    assert "drop --config or --quick" in capsys.readouterr().err
    assert main(["reproduce", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
