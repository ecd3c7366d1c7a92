"""`rmtllmf export`: a tiny study into TensorBoard and MLflow, read back by their own readers
and compared with results.db."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest

from conftest import tiny_zoo_config
from rmtllmf.app.reproduce import ReproduceConfig, reproduce
from rmtllmf.cli import main
from rmtllmf.study.store import ResultsDB

TINY_SWEEP = {
    "task_counts": [2],
    "scenarios": ["ideal", "strongest-user"],
    "links": ["relative"],
    "k_values": [1],
    "realign": {"k_per_class": 2, "steps": 2, "batch": 8},
    "analysis": {"samples": 4, "probes": 1},
    "lambda_grid": [0.0, 0.5],
}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A finished tiny study (14 runs, every figure) on the tiny random base."""
    root = tmp_path_factory.mktemp("study")
    cfg = ReproduceConfig(zoo=tiny_zoo_config(root, ("signs", "textures")), sweep=TINY_SWEEP)
    reproduce(cfg, root / "out", cache=root / "cache", progress=False)
    return root / "out"


def _rows(study: Path):
    db = ResultsDB(study / "results.db", read_only=True)
    try:
        return list(db.rows())
    finally:
        db.close()


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _expected(row) -> dict[str, float]:
    """The numbers every exported run must carry, straight from the database."""
    r = row.result
    out = {"normalized": r.normalized}
    for q, task in enumerate(row.config.tasks):
        out[f"accuracy/{task}"] = r.accuracy[task]
        out[f"mse/{task}"] = r.mse[q]
    return {k: v for k, v in out.items() if math.isfinite(v)}


def test_tensorboard_export_reads_back(study, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from rmtllmf.app.export import tracked_run

    before = _hashes(study)
    out = tmp_path / "tb"
    assert main(["export", "--to", "tensorboard", "--out", str(out), str(study)]) == 0
    assert "exported 14 run(s)" in capsys.readouterr().out
    rows = _rows(study)
    assert len(rows) == 14
    for row in rows:
        acc = EventAccumulator(str(out / tracked_run(row).name), size_guidance={"scalars": 0})
        acc.Reload()
        for tag, value in _expected(row).items():
            (event,) = acc.Scalars(tag)
            assert event.value == pytest.approx(value, rel=1e-6, abs=1e-12)  # float32 on disk
        start = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hp = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
        assert hp["link"].string_value == row.config.link
        assert hp["defense"].string_value == row.config.defense
        assert hp["merge.scaling"].number_value == pytest.approx(row.config.merge.scaling)
        assert hp["tasks"].string_value == "+".join(row.config.tasks)
    figures = EventAccumulator(str(out / "study"), size_guidance={"images": 0})
    figures.Reload()
    pngs = {p.stem for p in study.glob("*.png")}
    assert pngs and set(figures.Tags()["images"]) == pngs
    assert "report.md/text_summary" in figures.Tags()["tensors"]
    # a second export adds nothing; the study is untouched
    assert main(["export", "--to", "tensorboard", "--out", str(out), str(study)]) == 0
    assert "exported 0 run(s)" in capsys.readouterr().out
    assert _hashes(study) == before
    assert not list(out.glob(".*partial"))


def test_mlflow_export_reads_back(study, tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow", reason="the MLflow export needs mlflow-skinny (rmtllmf[track])")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    before = _hashes(study)
    out = tmp_path / "mlruns"
    argv = ["export", "--to", "mlflow", "--out", str(out), "--experiment", "tiny"]
    assert main([*argv, str(study / "results.db")]) == 0
    capsys.readouterr()
    client = MlflowClient(tracking_uri=out.resolve().as_uri())
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_key = {r.data.tags["rmtllmf.run_key"]: r for r in runs if "rmtllmf.run_key" in r.data.tags}
    rows = _rows(study)
    assert set(by_key) == {row.key for row in rows}
    (parent,) = [r for r in runs if "rmtllmf.study" in r.data.tags]
    for row in rows:
        run = by_key[row.key]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for tag, value in _expected(row).items():
            assert run.data.metrics[tag] == pytest.approx(value, rel=1e-12)
        params = run.data.params
        assert params["link"] == row.config.link
        assert params["scenario"] == row.config.scenario
        assert float(params["merge.scaling"]) == row.config.merge.scaling
        assert int(params["channel.n_users"]) == row.config.channel.n_users
        curve = row.result.realign_curve
        if curve:
            history = client.get_metric_history(run.info.run_id, "realign/val_accuracy")
            assert [(m.step, m.value) for m in history] == [(s, pytest.approx(a)) for s, a in curve]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {p.name for p in study.glob("*.png")} | {"report.md", "summary.json"} <= artifacts
    # idempotent: a second export adds no run
    assert main([*argv, str(study)]) == 0
    assert "exported 0 run(s)" in capsys.readouterr().out
    assert len(client.search_runs([experiment.experiment_id], max_results=1000)) == len(runs)
    assert _hashes(study) == before


def test_export_refuses_what_it_cannot_export(study, tmp_path, capsys):
    missing = tmp_path / "nothing"
    assert main(["export", "--to", "tensorboard", "--out", str(tmp_path / "a"), str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err
    not_db = tmp_path / "notes.txt"
    not_db.write_text("hello")
    assert main(["export", "--to", "tensorboard", "--out", str(tmp_path / "b"), str(not_db)]) == 2
    assert "is not a results database" in capsys.readouterr().err
    assert main(["export", "--to", "mlflow", "--out", str(not_db), str(study)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
