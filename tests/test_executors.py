"""The sweep's executors (in-process, local processes, Ray): the same numbers from each, only
the driver writes, and the faults: a Ray worker SIGKILLed mid-task, the driver SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import stored_numbers as numbers
from conftest import tiny_zoo_config
from ray_helpers import CountLoads, KillOnce, slow_echo
from rmtllmf.app.reproduce import (
    ReproduceConfig,
    Scale,
    StudyPool,
    build_pool,
    reproduce,
    sweep_config,
)
from rmtllmf.study.executors import InProcess, ProcessExecutor, RayExecutor, _in_flight, _in_order
from rmtllmf.study.spectra import SPECTRA_META
from rmtllmf.study.store import ResultsDB
from rmtllmf.study.sweep import ensure_lambdas, pending_runs, run_sweep, stored_lambdas

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("executors")
    cfg = ReproduceConfig(
        zoo=tiny_zoo_config(root, ("signs", "textures", "counting")),
        sweep={
            "task_counts": [2, 3],
            "scenarios": ["ideal", "sum-rate"],
            "links": ["snr", "symbol"],
            "k_values": [1],
            "realign": {"k_per_class": 2, "steps": 2, "batch": 8},
            "analysis": {"samples": 4, "probes": 1},
            "lambda_grid": [0.0, 0.5],
            "extra_defenses": ["shrink"],
        },
    )
    cache = root / "cache"
    build_pool(cfg, cache, progress=False)  # built once, before any executor starts
    return cfg, cache


@pytest.fixture
def ray_workers_import_tests(monkeypatch):
    """Ray's workers inherit the driver's environment: put tests/ on their path."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)


def spectra(out: Path) -> str:
    """The rank spectra the study stored (measured on the executor's workers)."""
    db = ResultsDB(out / "results.db", read_only=True)
    try:
        stored = db.meta(SPECTRA_META)
    finally:
        db.close()
    assert stored is not None
    return stored


def test_process_and_ray_give_the_in_process_numbers(study, tmp_path, ray_workers_import_tests):
    cfg, cache = study
    kw = {"cache": cache, "progress": False}
    ref = reproduce(cfg, tmp_path / "serial", **kw)
    assert len(numbers(tmp_path / "serial")) > 40
    for name, scale in (
        ("process", Scale("process", workers=2)),
        ("ray", Scale("ray", workers=2)),
    ):
        summary = reproduce(cfg, tmp_path / name, scale=scale, **kw)
        assert numbers(tmp_path / name) == numbers(tmp_path / "serial"), name
        assert summary == ref, name  # the report does not depend on the order runs finished
        assert spectra(tmp_path / name) == spectra(tmp_path / "serial"), name  # measured on workers


def test_max_runs_and_resume_are_the_same_under_ray(study, tmp_path, ray_workers_import_tests):
    cfg, cache = study
    scfg = sweep_config(cfg)
    pool = build_pool(cfg, cache, progress=False)
    factory = StudyPool(cfg.model_dump_json(), str(cache))
    ray = RayExecutor(factory, workers=2)
    db = ResultsDB(tmp_path / "ray.db")
    assert run_sweep(pool, pool.pool_id, scfg, db, max_runs=5, executor=ray) == 5
    assert len(db.done()) == 5
    rest = run_sweep(pool, pool.pool_id, scfg, db, executor=ProcessExecutor(factory, 2))
    serial = ResultsDB(tmp_path / "serial.db")
    assert run_sweep(pool, pool.pool_id, scfg, serial, executor=InProcess(pool)) == rest + 5
    assert db.done() == serial.done()


@pytest.mark.parametrize("executor", ["process", "ray"])
def test_map_calls_returns_results_in_the_items_order_from_every_worker(
    study, tmp_path, executor, ray_workers_import_tests
):
    cfg, cache = study
    log = tmp_path / "loads.txt"
    factory = CountLoads(StudyPool(cfg.model_dump_json(), str(cache)), str(log))
    items = [(i, 2.0 if i == 0 else 0.0) for i in range(8)]  # the first finishes last
    with RayExecutor(factory, 2) if executor == "ray" else ProcessExecutor(factory, 2) as runner:
        first = runner.map_calls(slow_echo, items)
        again = runner.map_calls(slow_echo, items[:3])
    assert [r[:2] for r in first] == [(i, 3) for i in range(8)]
    assert [r[0] for r in again] == [0, 1, 2]
    assert len({r[2] for r in first}) == 2  # both workers took items
    loads = log.read_text().split()
    assert len(loads) == len(set(loads)) == 2  # kept between calls: one load per worker


@pytest.mark.parametrize("executor", ["process", "ray"])
def test_each_worker_loads_the_pool_once_not_per_task(
    study, tmp_path, executor, ray_workers_import_tests
):
    cfg, cache = study
    scfg = sweep_config(cfg)
    pool = build_pool(cfg, cache, progress=False)
    log = tmp_path / "loads.txt"
    factory = CountLoads(StudyPool(cfg.model_dump_json(), str(cache)), str(log))
    runner = RayExecutor(factory, 2) if executor == "ray" else ProcessExecutor(factory, 2)
    db = ResultsDB(tmp_path / "db")
    groups = len(pending_runs(pool.pool_id, scfg, db, ensure_lambdas(pool, pool.pool_id, scfg, db)))
    assert run_sweep(pool, pool.pool_id, scfg, db, executor=runner) > groups > 10
    loads = log.read_text().split()
    assert len(loads) == len(set(loads)) <= 2  # one load per worker process


@pytest.mark.parametrize("killed_in", ["group", "lambda"])
def test_a_ray_worker_killed_mid_task_is_retried_and_no_run_is_lost_or_doubled(
    study, tmp_path, killed_in, ray_workers_import_tests
):
    """The worker dies in its first evaluation: of a channel-use group (λ_N chosen on the
    driver beforehand) or of a point of the λ grid (a map_calls task)."""
    cfg, cache = study
    scfg = sweep_config(cfg)
    pool = build_pool(cfg, cache, progress=False)
    marker = tmp_path / "killed-once"
    factory = KillOnce(StudyPool(cfg.model_dump_json(), str(cache)), str(marker))
    db = ResultsDB(tmp_path / "ray.db")
    if killed_in == "group":
        ensure_lambdas(pool, pool.pool_id, scfg, db)
    commits: list[tuple[str, bool]] = []
    real_commit = db.commit

    def counted(run):
        stored = real_commit(run)
        commits.append((run.key, stored))
        return stored

    db.commit = counted
    ran = run_sweep(pool, pool.pool_id, scfg, db, executor=RayExecutor(factory, workers=2))
    assert marker.exists(), "no worker was killed"
    serial = ResultsDB(tmp_path / "serial.db")
    run_sweep(pool, pool.pool_id, scfg, serial)
    assert ran == len(serial.done()) == len(commits)
    assert all(stored for _, stored in commits)  # each run arrived once
    assert len({k for k, _ in commits}) == len(commits)
    rows = {r.key: r.result for r in db.rows()}
    assert rows == {r.key: r.result for r in serial.rows()}
    lambdas = stored_lambdas(pool.pool_id, scfg, db)
    assert len(lambdas) == len(scfg.task_counts)
    assert lambdas == stored_lambdas(pool.pool_id, scfg, serial)


def test_the_ray_driver_killed_then_rerun_resumes_to_the_same_numbers(
    study, tmp_path, ray_workers_import_tests
):
    cfg, cache = study
    config = tmp_path / "study.json"
    config.write_text(cfg.model_dump_json())

    def argv(out: Path) -> list[str]:
        code = (
            "import sys; from rmtllmf.app.reproduce import ReproduceConfig, Scale, reproduce; "
            "cfg = ReproduceConfig.model_validate_json(open(sys.argv[1]).read()); "
            "reproduce(cfg, sys.argv[2], cache=sys.argv[3], progress=False, "
            "scale=Scale('ray', workers=2))"
        )
        return [sys.executable, "-c", code, str(config), str(out), str(cache)]

    reproduce(cfg, tmp_path / "reference", cache=cache, progress=False)
    proc = subprocess.Popen(
        argv(tmp_path / "killed"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    db_file = tmp_path / "killed" / "results.db"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if db_file.exists() and len(ResultsDB(db_file, read_only=True).done()) >= 3:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
            break
        time.sleep(0.2)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    kept = len(ResultsDB(db_file, read_only=True).done())
    assert 3 <= kept < len(numbers(tmp_path / "reference"))
    subprocess.run(argv(tmp_path / "killed"), check=True, capture_output=True, timeout=600)
    assert numbers(tmp_path / "killed") == numbers(tmp_path / "reference")


def test_in_flight_keeps_at_most_two_tasks_per_slot_and_in_order_undoes_completion_order():
    """Fake tasks that complete last-submitted first: every item comes back once with its own
    index, never more than ``2 * slots`` are in flight, and the ones still in flight when the
    consumer stops are cancelled."""
    cancelled, peak = [], [0]

    class Task:  # hashable by identity, as a future is
        def __init__(self, item):
            self.item = item

    def submit(item):
        return Task(item)

    def wait_one(running):
        peak[0] = max(peak[0], len(running))
        return running[-1:], running[:-1]

    items = [f"item{i}" for i in range(9)]
    flow = list(_in_flight(items, submit, wait_one, lambda t: t.item.upper(), cancelled.append, 2))
    assert sorted(i for i, _ in flow) == list(range(9)) and peak[0] == 4
    assert [i for i, _ in flow] != list(range(9))  # completion order differs
    assert all(r == items[i].upper() for i, r in flow)
    again = _in_flight(items, submit, wait_one, lambda t: t.item.upper(), cancelled.append, 2)
    assert _in_order(again, 9) == [x.upper() for x in items]
    early = _in_flight(items, submit, wait_one, lambda t: t.item, cancelled.append, 2)
    next(early)
    early.close()  # the consumer stops after one result
    assert len(cancelled) == 3
