"""The paper's study as a resumable sweep: runs the plan (:mod:`rmtllmf.study.plan`) into the
store (:mod:`rmtllmf.study.store`), one channel use per group of runs that share it.
"""

from __future__ import annotations

import time

from rmtllmf._progress import progress_bar
from rmtllmf.errors import InputError
from rmtllmf.pools.base import ModelPool
from rmtllmf.study.clean import choose_lambda
from rmtllmf.study.experiment import Reception, receive, reception_key, run_experiment
from rmtllmf.study.plan import PlannedRun, SweepConfig, plan_runs, subsets
from rmtllmf.study.store import ResultsDB, run_key


def ensure_lambdas(
    pool: ModelPool, pool_id: str, cfg: SweepConfig, db: ResultsDB
) -> dict[int, float]:
    """``λ_N`` per task count: stored ones, else chosen on validation and stored."""
    lambdas = {}
    for n, combos in subsets(cfg).items():
        stored = db.lambda_for(pool_id, n)
        if stored is None:
            stored, scores = choose_lambda(pool, combos[0], cfg.merge_method, cfg.lambda_grid)
            db.set_lambda(pool_id, n, stored, scores)
        lambdas[n] = stored
    return lambdas


def pending_runs(
    pool_id: str, cfg: SweepConfig, db: ResultsDB, lambdas: dict[int, float]
) -> list[list[PlannedRun]]:
    """The unfinished runs, grouped by channel use (one reception serves a whole group)."""
    done = db.done()
    groups: dict[str, list[PlannedRun]] = {}
    for run in plan_runs(cfg, lambdas):
        if run_key(pool_id, run.config) not in done:
            groups.setdefault(reception_key(run.config), []).append(run)
    return list(groups.values())


def run_sweep(
    pool: ModelPool,
    pool_id: str,
    cfg: SweepConfig,
    db: ResultsDB,
    *,
    progress: bool = False,
    max_runs: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> int:
    """Run every planned run that is not in ``db`` yet; returns how many ran.

    ``max_runs`` stops early (the rest run on the next call): the resumption path, tested.
    ``shard = (i, n)`` runs only the channel-use groups ``g`` with ``g % n == i``, so ``n``
    processes can share one database.
    """
    cfg.check()
    unknown = [t for t in cfg.tasks if t not in pool.finetuned]
    if unknown:
        raise InputError(f"tasks {unknown} are not in the model pool ({sorted(pool.finetuned)})")
    db.set_meta("sweep_config", cfg.model_dump_json())
    db.set_meta("pool_id", pool_id)
    lambdas = ensure_lambdas(pool, pool_id, cfg, db)
    groups = pending_runs(pool_id, cfg, db, lambdas)
    todo = [run for g, group in enumerate(groups) if g % shard[1] == shard[0] for run in group]
    if max_runs is not None:
        todo = todo[:max_runs]
    cache: tuple[str, Reception] | None = None
    with progress_bar(progress and bool(todo), "sweep", len(todo)) as advance:
        for run in todo:
            t0 = time.perf_counter()
            rkey = reception_key(run.config)
            if cache is None or cache[0] != rkey:
                cache = (rkey, receive(pool, run.config))
            result = run_experiment(pool, run.config, cache[1])
            db.add(run_key(pool_id, run.config), run.role, result, time.perf_counter() - t0)
            advance(f"sweep: N={len(run.config.tasks)} {run.config.link} {run.config.defense}")
    return len(todo)
