"""The paper's study as a resumable sweep: runs the plan (:mod:`rmtllmf.study.plan`) into the
store (:mod:`rmtllmf.study.store`), one channel use per group of runs that share it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from rmtllmf._progress import progress_bar
from rmtllmf.defense import REALIGNING
from rmtllmf.errors import InputError
from rmtllmf.pools.base import ModelPool
from rmtllmf.study.clean_merge import choose_lambda
from rmtllmf.study.executors import Executor, InProcess
from rmtllmf.study.experiment import reception_key
from rmtllmf.study.plan import PlannedRun, SweepConfig, plan_runs, spectra_receptions, subsets
from rmtllmf.study.snr_axis import SIGNAL_META, signal_power
from rmtllmf.study.spectra import SPECTRA_META, RankSpectra, rank_spectra, spectra_key
from rmtllmf.study.store import ResultsDB, run_key


def lambda_key(pool_id: str, cfg: SweepConfig, n: int) -> str:
    """What ``λ_N`` is stored under: everything its choice depends on (the pool, the merge
    method, the grid and the validation subset, the first subset of ``N`` tasks), so a changed
    setting chooses it anew instead of reusing a value chosen for another."""
    what = {
        "method": cfg.merge_method,
        "grid": list(cfg.lambda_grid),
        "tasks": list(subsets(cfg)[n][0]),
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    return f"{pool_id}:{digest}"


def stored_lambdas(pool_id: str, cfg: SweepConfig, db: ResultsDB) -> dict[int, float]:
    """The ``λ_N`` stored for ``cfg`` on the pool (:func:`lambda_key`), per task count that has
    one."""
    found = {n: db.lambda_for(lambda_key(pool_id, cfg, n), n) for n in subsets(cfg)}
    return {n: value for n, value in found.items() if value is not None}


def ensure_lambdas(
    pool: ModelPool,
    pool_id: str,
    cfg: SweepConfig,
    db: ResultsDB,
    runner: Executor | None = None,
) -> dict[int, float]:
    """``λ_N`` per task count: stored ones (:func:`lambda_key`), else chosen on validation (the
    grid's points scored on ``runner``'s workers; default: this process) and stored."""
    lambdas = {}
    for n, combos in subsets(cfg).items():
        key = lambda_key(pool_id, cfg, n)
        stored = db.lambda_for(key, n)
        if stored is None:
            stored, scores = choose_lambda(
                pool,
                combos[0],
                cfg.merge_method,
                cfg.lambda_grid,
                map_calls=runner.map_calls if runner is not None else None,
            )
            db.set_lambda(key, n, stored, scores)
        lambdas[n] = stored
    return lambdas


def ensure_spectra(
    pool: ModelPool,
    pool_id: str,
    cfg: SweepConfig,
    db: ResultsDB,
    lambdas: dict[int, float],
    runner: Executor | None = None,
) -> RankSpectra | None:
    """The rank spectra of ``cfg.spectra`` (:mod:`rmtllmf.study.spectra`) on
    :func:`~rmtllmf.study.plan.spectra_receptions`: the stored ones when they measured the same
    receptions on the same pool, else measured now (each reception on ``runner``'s workers;
    default: this process) and stored in the database's meta (``rank_spectra``), where the
    report reads them. ``None`` without ``cfg.spectra``."""
    receptions = spectra_receptions(cfg, lambdas)
    if cfg.spectra is None or not receptions:
        return None
    key = spectra_key(pool_id, receptions, cfg.spectra)
    stored = db.meta(SPECTRA_META)
    if stored is not None:
        spectra = RankSpectra.from_json(json.loads(stored))
        if spectra.key == key:
            return spectra
    spectra = rank_spectra(
        pool,
        receptions,
        cfg.spectra,
        key=key,
        map_calls=runner.map_calls if runner is not None else None,
    )
    db.set_meta(SPECTRA_META, json.dumps(spectra.to_json()))
    return spectra


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``(i, n)`` with ``0 <= i < n``, else an error that says what a shard is."""
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise InputError(
            f"shard {i}/{n} does not exist; shards of n are 0/n .. {max(n, 1) - 1}/n (n >= 1)"
        )
    return shard


RUN_WEIGHT = {"run": 1.0, "realign": 4.0, "analysis": 15.0}
"""Estimated cost, for balancing shards: every run counts ``run``, a realigning one ``realign``
more, one with the interference analysis ``analysis`` more, in units of an undefended run
(the ratios measured in docs/scaling.md; realignment's cost does not grow with ``N``). Not
counted: a group's reception (the symbol link's detector) and a blind defense's first stage."""


def run_weight(run: PlannedRun) -> float:
    """The estimated cost of ``run`` (:data:`RUN_WEIGHT`)."""
    cfg = run.config
    return (
        RUN_WEIGHT["run"]
        + RUN_WEIGHT["realign"] * (cfg.defense in REALIGNING)
        + RUN_WEIGHT["analysis"] * (cfg.analysis is not None)
    )


def shard_owners(weights: Sequence[float], n: int) -> list[int]:
    """The shard of each group of the plan, by estimated cost (longest processing time first):
    the groups, heaviest first (plan order among equals), each go to the shard with the least
    estimated work so far (the lowest index among equals). Deterministic, and a function of the
    whole plan only."""
    load = [0.0] * n
    owners = [0] * len(weights)
    for g in sorted(range(len(weights)), key=lambda g: -weights[g]):
        owners[g] = min(range(n), key=load.__getitem__)
        load[owners[g]] += weights[g]
    return owners


def plan_groups(cfg: SweepConfig, lambdas: dict[int, float]) -> list[list[PlannedRun]]:
    """The whole plan grouped by channel use (one reception serves a whole group), in plan
    order."""
    groups: dict[str, list[PlannedRun]] = {}
    for run in plan_runs(cfg, lambdas):
        groups.setdefault(reception_key(run.config), []).append(run)
    return list(groups.values())


def pending_runs(
    pool_id: str,
    cfg: SweepConfig,
    db: ResultsDB,
    lambdas: dict[int, float],
    shard: tuple[int, int] = (0, 1),
) -> list[list[PlannedRun]]:
    """The unfinished runs of ``shard``, grouped by channel use (:func:`plan_groups`).

    Shard ``(i, n)`` holds the groups that :func:`shard_owners` gives to ``i``, balanced by
    estimated cost over the whole plan: what a shard owns never depends on what is finished, so
    shards that resume at different times, or write to different databases, still split the
    plan exactly.
    """
    done = db.done()
    return [
        todo
        for group in shard_groups(cfg, lambdas, shard)
        if (todo := [run for run in group if run_key(pool_id, run.config) not in done])
    ]


def shard_groups(
    cfg: SweepConfig, lambdas: dict[int, float], shard: tuple[int, int] = (0, 1)
) -> list[list[PlannedRun]]:
    """The channel-use groups shard ``(i, n)`` owns (:func:`shard_owners` over the whole plan's
    :func:`plan_groups`, weighed by :func:`run_weight`), in plan order."""
    i, n = check_shard(shard)
    groups = plan_groups(cfg, lambdas)
    owners = shard_owners([sum(run_weight(r) for r in g) for g in groups], n)
    return [group for group, owner in zip(groups, owners, strict=True) if owner == i]


def run_sweep(
    pool: ModelPool,
    pool_id: str,
    cfg: SweepConfig,
    db: ResultsDB,
    *,
    progress: bool = False,
    max_runs: int | None = None,
    shard: tuple[int, int] = (0, 1),
    executor: Executor | None = None,
) -> int:
    """Run every planned run that is not in ``db`` yet; returns how many ran.

    ``max_runs`` stops early (the rest run on the next call): the resumption path, tested.
    ``shard = (i, n)`` runs only the channel-use groups that shard owns (see
    :func:`pending_runs`), so ``n`` machines can each fill their own database (combined
    by :func:`~rmtllmf.study.store.merge_databases`). ``executor`` runs the groups
    (:mod:`rmtllmf.study.executors`; default: this process, on ``pool``) and scores ``λ_N``
    and the rank spectra before them, and is closed when the sweep ends; whichever it is, this
    function alone writes ``db``, committing each run as it arrives.
    """
    cfg.check()
    check_shard(shard)
    unknown = [t for t in cfg.tasks if t not in pool.finetuned]
    if unknown:
        raise InputError(f"tasks {unknown} are not in the model pool ({sorted(pool.finetuned)})")
    db.set_meta("sweep_config", cfg.model_dump_json())
    db.set_meta("pool_id", pool_id)
    if cfg.snr_axis is not None:
        axis_tasks = subsets(cfg)[max(cfg.task_counts)][0]
        db.set_meta(SIGNAL_META, json.dumps(signal_power(pool, axis_tasks)))
    with executor if executor is not None else InProcess(pool) as runner:
        lambdas = ensure_lambdas(pool, pool_id, cfg, db, runner)
        if shard[0] == 0:  # one shard of a sharded study measures them
            ensure_spectra(pool, pool_id, cfg, db, lambdas, runner)
        groups = _first_runs(pending_runs(pool_id, cfg, db, lambdas, shard), max_runs)
        total = sum(len(g) for g in groups)
        ran = 0
        with progress_bar(progress and total > 0, "sweep", total) as advance:
            for run in runner.map_groups(pool_id, groups):
                ran += db.commit(run)
                cfg_n = json.loads(run.config)
                advance(f"sweep: N={run.n_tasks} {cfg_n['link']} {cfg_n['defense']}")
    return ran


def _first_runs(groups: list[list[PlannedRun]], max_runs: int | None) -> list[list[PlannedRun]]:
    """The groups cut after their first ``max_runs`` runs (all of them for ``None``)."""
    if max_runs is None:
        return groups
    out, left = [], max_runs
    for group in groups:
        if left <= 0:
            break
        out.append(group[:left])
        left -= len(out[-1])
    return out
