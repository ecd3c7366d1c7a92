"""The sweep: plan, SQLite store, resumption, determinism, code-version guard, CSV."""

from __future__ import annotations

import csv
import json
import math

import pytest

import rmtllmf.study.executors as executors
import rmtllmf.study.store as store
from rmtllmf.defense import RealignConfig
from rmtllmf.errors import InputError
from rmtllmf.study.analysis import AnalysisConfig
from rmtllmf.study.experiment import ExperimentConfig
from rmtllmf.study.plan import SweepConfig, plan_runs, subsets
from rmtllmf.study.store import ResultsDB, RunRecord, RunResult, export_csv
from rmtllmf.study.sweep import run_sweep

TASKS = ("signs", "textures", "counting")


def small_config(**update) -> SweepConfig:
    cfg = SweepConfig(
        tasks=TASKS,
        task_counts=(2, 3),
        scenarios=("ideal", "sum-rate"),
        links=("absolute", "symbol"),
        k_values=(1, 2),
        realign=RealignConfig(k_per_class=2, steps=2, batch=8),
        analysis=AnalysisConfig(samples=8, probes=1),
        lambda_grid=(0.0, 0.5, 1.0),
    )
    return cfg.model_copy(update=update)


def test_subsets_all_combinations_or_a_seeded_sample():
    cfg = SweepConfig(tasks=tuple("abcdefgh"), task_counts=(2, 3, 4, 5, 6, 7, 8))
    assert sum(len(v) for v in subsets(cfg).values()) == 247
    sample = SweepConfig(tasks=tuple("abcdefgh"), subsets_per_count=3)
    picked = subsets(sample)
    assert [len(v) for v in picked.values()] == [3, 3, 3, 3, 3, 3, 1]
    assert picked == subsets(sample)  # seeded
    assert all(len(set(s)) == n for n, subs in picked.items() for s in subs)


def test_plan_counts_each_figure():
    cfg = small_config()
    runs = plan_runs(cfg, {2: 0.5, 3: 0.3})
    roles = [r.role for r in runs]
    # clean: 3 subsets (N=2) x 2 defenses (none and the floor base), and at the largest N
    # 1 subset x 4 (none, realign and the floors base, base+realign);
    # fig2: 3 subsets (N=2) x 2 scen x 2 links x 2 defenses;
    # ablation: 1 subset x 2 x 2 x 4; kshot: 2 scenarios x k=1 (k=2 is the ablation's run)
    assert roles.count("clean") == 10
    floors = [r for r in runs if r.config.defense in ("base", "base+realign")]
    assert {(r.role, r.config.link) for r in floors} == {("clean", "noiseless")}
    clean_at = {(len(r.config.tasks), r.config.defense) for r in runs if r.role == "clean"}
    assert clean_at == {(2, "none"), (2, "base")} | {
        (3, d) for d in ("none", "realign", "base", "base+realign")
    }
    assert roles.count("fig2") == 24
    assert roles.count("ablation") == 16
    assert roles.count("kshot") == 2
    assert all(r.config.merge.scaling == 0.5 for r in runs if len(r.config.tasks) == 2)
    analysed = [r for r in runs if r.config.analysis is not None]
    assert {(r.role, r.config.defense) for r in analysed} == {("ablation", "none")}
    assert len({r.config.model_dump_json() for r in runs}) == len(runs)


def test_bad_plans_are_clear_errors():
    with pytest.raises(InputError, match="do not fit a suite of 3 tasks"):
        plan_runs(small_config(task_counts=(2, 4)), {2: 0.5, 4: 0.5})
    with pytest.raises(InputError, match="repeat"):
        small_config(tasks=("signs", "signs")).check()


def test_interrupted_sweep_resumes_to_identical_results(tiny_zoo, tmp_path, monkeypatch):
    cfg = small_config()
    full = ResultsDB(tmp_path / "full.db")
    n_total = run_sweep(tiny_zoo, "zoo", cfg, full)
    assert n_total == len(full.done()) == 52

    db = ResultsDB(tmp_path / "resumed.db")
    assert run_sweep(tiny_zoo, "zoo", cfg, db, max_runs=7) == 7
    calls = {"n": 0}
    real = executors.run_experiment

    def crash_on_fifth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(executors, "run_experiment", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(tiny_zoo, "zoo", cfg, db)
    assert len(db.done()) == 11  # nothing finished was lost
    monkeypatch.setattr(executors, "run_experiment", real)
    ran = run_sweep(tiny_zoo, "zoo", cfg, db)
    assert ran == n_total - 11  # finished runs are not recomputed
    assert run_sweep(tiny_zoo, "zoo", cfg, db) == 0

    def results(d):
        return {
            r.config.model_dump_json(): json.dumps(r.result.to_json(), sort_keys=True)
            for r in d.rows()
        }

    assert results(db) == results(full)


def test_results_carry_analysis_and_export_to_csv(tiny_zoo, tmp_path):
    db = ResultsDB(tmp_path / "r.db")
    run_sweep(tiny_zoo, "zoo", small_config(links=("absolute",), k_values=(2,)), db)
    rows = list(db.rows())
    analysed = [r for r in rows if r.result.analysis is not None]
    assert analysed and all(0 <= r.result.analysis.reject_robust <= 1 for r in analysed)
    for r in analysed:  # the flat rejection rate is the mean of the per-task ones
        per_task = r.result.analysis.reject_robust_per_task
        assert set(per_task) == set(r.config.tasks)
        mean = sum(per_task.values()) / len(per_task)
        assert r.result.analysis.reject_robust == pytest.approx(mean)
    # the stored JSON reads into the typed record and writes back to the very same text
    stored = [raw for (raw,) in db.conn.execute("SELECT result FROM runs ORDER BY rowid")]
    assert [json.dumps(r.result.to_json()) for r in rows] == stored
    out = export_csv(db.rows(), tmp_path / "runs.csv")
    with out.open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == sum(len(r.config.tasks) for r in rows)
    first = rows[0]
    assert [t["task"] for t in table[: len(first.config.tasks)]] == list(first.config.tasks)
    assert float(table[0]["accuracy"]) == first.result.accuracy[first.config.tasks[0]]
    assert all(0.0 <= float(t["accuracy"]) <= 1.0 for t in table)
    assert all(not math.isnan(float(t["normalized"])) for t in table)


def test_older_rows_read_typed(tmp_path):
    """A row written before ``chance``, the realignment curve and the analysis were stored."""
    db = ResultsDB(tmp_path / "r.db")
    cfg = ExperimentConfig(tasks=("signs", "textures"), defense="freeze", seed=3)
    old = {
        "accuracy": {"signs": 0.5, "textures": 0.25},
        "normalized": 0.4,
        "mse": [0.01, 0.02],
        "error_mse": [0.001, 0.002],
        "received_cosine": [[1.0, 0.1], [0.1, 1.0]],
        "dropped_users": [],
        "nonfinite_entries": 0,
    }
    db.conn.execute(
        "INSERT INTO runs VALUES ('k', 'clean', 2, ?, ?, 1.5, datetime('now'))",
        (cfg.model_dump_json(), json.dumps(old)),
    )
    (row,) = db.rows()
    assert isinstance(row, RunRecord) and isinstance(row.result, RunResult)
    assert (row.role, row.config, row.seconds) == ("clean", cfg, 1.5)
    assert math.isnan(row.result.chance)
    assert row.result.accuracy == {"signs": 0.5, "textures": 0.25}
    assert row.result.mse == (0.01, 0.02)
    assert row.result.received_cosine == ((1.0, 0.1), (0.1, 1.0))
    assert row.result.realign_curve == () and row.result.realign_kept_step == 0
    assert row.result.analysis is None
    assert row.result.to_json() == {**old, "chance": row.result.chance}
    db.close()


def test_database_from_other_code_version_is_refused(tmp_path, monkeypatch):
    ResultsDB(tmp_path / "r.db").close()
    monkeypatch.setattr(store, "code_version", lambda: "0000000000000000")
    with pytest.raises(InputError, match=r"code version .* --reset"):
        ResultsDB(tmp_path / "r.db")
    ResultsDB(tmp_path / "r.db", reset=True).close()


def test_unknown_tasks_are_refused(tiny_zoo, tmp_path):
    db = ResultsDB(tmp_path / "r.db")
    with pytest.raises(InputError, match="not in the model pool"):
        run_sweep(tiny_zoo, "zoo", small_config(tasks=("signs", "letters"), task_counts=(2,)), db)


def test_no_task_is_evaluated_twice_on_the_same_state_in_a_sweep(tiny_zoo, tmp_path, monkeypatch):
    """A task's accuracy depends on the model state alone: the sweep measures each (task,
    state) once, e.g. the base model's floor once per task, not once per subset."""
    from rmtllmf.study.analysis import state_digest

    seen: list[tuple[str, str, str]] = []
    real = tiny_zoo.task_accuracy

    def counted(state, tasks, split="test"):
        seen.extend((split, t, state_digest(state)) for t in tasks)
        return real(state, tasks, split)

    monkeypatch.setattr(tiny_zoo, "task_accuracy", counted)
    db = ResultsDB(tmp_path / "db")
    run_sweep(tiny_zoo, "zoo", small_config(), db)
    runs = [x for x in seen if x[0] == "test"]  # the runs' evaluations (λ is chosen on val)
    assert len(runs) == len(set(runs)) > 10
    base = state_digest(tiny_zoo.base_state)
    floor = [t for split, t, d in seen if d == base and split == "test"]
    assert sorted(floor) == sorted(TASKS)  # 4 base runs, 3 tasks
