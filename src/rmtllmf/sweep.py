"""The paper's study as a resumable sweep over task subsets, scenarios, links, defenses, seeds.

The plan (:func:`plan_runs`), for every task count ``N`` in ``task_counts`` and every subset of
that size (all ``C(T, N)`` combinations, 247 for ``N = 2..8`` of 8 tasks, or a seeded sample of
``subsets_per_count``):

* ``clean``: noiseless link, defenses ``none`` and ``realign`` (realign-on-clean is the
  control that separates what realignment *repairs* from what it *adds*), and the floors
  ``base`` and ``base+realign`` (the BS discards every received vector), which no channel
  changes, so they run once per subset and stand in every scenario's table;
* ``fig2``: every scenario × link, defenses ``none`` and ``r-mtllmf`` (paper Fig. 2);
* ``ablation``: at the largest ``N``, every scenario × link with all four defenses (Fig. 5,
  left); the undefended runs carry the interference analysis (WDE, hypothesis test);
* ``kshot``: at the largest ``N``, R-MTLLMF with ``k`` samples per class for each ``k`` in
  ``k_values`` on the ideal and the first worst-case scenario, first link (Fig. 5, right).

``λ_N`` (eq. 6) is chosen per task count on *validation* data (the clean merge of the first
subset of that size over ``lambda_grid``), stored, and used for every run of that size.

Results go to an SQLite database keyed by the sha256 of each run's full resolved config and
the model pool's identity: a finished run is committed at once, an interrupted sweep resumes
where it stopped, and a run is never computed twice. The database records the code version
(a hash of the package's sources); opening it with different code is an error, because mixing
results of two code versions in one table would be silent corruption.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rmtllmf.analysis import AnalysisConfig
from rmtllmf.channel import ScenarioConfig, SymbolLinkConfig
from rmtllmf.defense import CHANNEL_FREE, DEFENSES, RealignConfig
from rmtllmf.errors import InputError
from rmtllmf.evaluation import choose_lambda
from rmtllmf.experiment import (
    ExperimentConfig,
    ExperimentResult,
    LinkMode,
    Reception,
    Scenario,
    receive,
    reception_key,
    run_experiment,
)
from rmtllmf.fusion import MergeConfig
from rmtllmf.pool import ModelPool
from rmtllmf.train import progress_bar

RECEIVING = tuple(d for d in DEFENSES if d not in CHANNEL_FREE)
"""The defenses that act on what was received (the ablation's columns)."""
DEFAULT_GRID = tuple(round(float(x), 4) for x in np.linspace(0.0, 1.0, 21))


class SweepConfig(BaseModel):
    """What the sweep runs (frozen; stored beside the results)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: tuple[str, ...] = Field(..., min_length=1)
    task_counts: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    subsets_per_count: int | None = Field(
        None, ge=1, description="seeded sample of subsets per count; None = all combinations"
    )
    scenarios: tuple[Scenario, ...] = ("ideal", "sum-rate", "strongest-user")
    links: tuple[LinkMode, ...] = ("snr", "absolute", "relative", "weights", "symbol")
    k_values: tuple[int, ...] = (1, 2, 5, 10, 20)
    seeds: tuple[int, ...] = (0,)
    merge_method: str = "task-arithmetic"
    lambda_grid: tuple[float, ...] = DEFAULT_GRID
    realign: RealignConfig = RealignConfig()
    channel: ScenarioConfig = ScenarioConfig()
    symbol: SymbolLinkConfig = SymbolLinkConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    nan_policy: Literal["zero", "drop-user", "error"] = "zero"
    plan_seed: int = 0

    def check(self) -> None:
        """Clear errors for plans that cannot run."""
        if len(set(self.tasks)) != len(self.tasks):
            raise InputError(f"tasks repeat: {list(self.tasks)}")
        too_big = [n for n in self.task_counts if not 1 <= n <= len(self.tasks)]
        if too_big:
            raise InputError(
                f"task counts {too_big} do not fit a suite of {len(self.tasks)} tasks; "
                f"use counts between 1 and {len(self.tasks)}"
            )
        if not self.task_counts or not self.links or not self.scenarios or not self.seeds:
            raise InputError("task_counts, scenarios, links and seeds must not be empty")


@dataclass(frozen=True)
class PlannedRun:
    """One run of the plan and the figure it feeds."""

    role: str
    config: ExperimentConfig


def subsets(cfg: SweepConfig) -> dict[int, list[tuple[str, ...]]]:
    """Task subsets per count: all combinations, or a seeded sample of them."""
    out = {}
    for n in sorted(set(cfg.task_counts)):
        combos = list(itertools.combinations(cfg.tasks, n))
        if cfg.subsets_per_count is not None and len(combos) > cfg.subsets_per_count:
            rng = np.random.default_rng([cfg.plan_seed, n])
            pick = sorted(rng.choice(len(combos), cfg.subsets_per_count, replace=False))
            combos = [combos[i] for i in pick]
        out[n] = combos
    return out


def kshot_scenarios(cfg: SweepConfig) -> list[Scenario]:
    """Scenarios of the k sweep: the ideal one (or the first) and the first worst case."""
    ideal = [s for s in cfg.scenarios if s.endswith("ideal")][:1] or list(cfg.scenarios[:1])
    worst = [s for s in cfg.scenarios if s not in ideal][:1]
    return ideal + worst


def plan_runs(cfg: SweepConfig, lambdas: dict[int, float]) -> list[PlannedRun]:
    """Every run of the sweep (see module docs), in a stable order."""
    cfg.check()
    runs: list[PlannedRun] = []
    by_count = subsets(cfg)
    largest = max(by_count)
    for n, combos in by_count.items():
        for tasks, seed in itertools.product(combos, cfg.seeds):
            common = {
                "tasks": tasks,
                "merge": MergeConfig(method=cfg.merge_method, scaling=lambdas[n]),
                "realign": cfg.realign,
                "channel": cfg.channel,
                "symbol": cfg.symbol,
                "nan_policy": cfg.nan_policy,
                "seed": seed,
            }
            for defense in ("none", "realign", *CHANNEL_FREE):
                runs.append(
                    PlannedRun(
                        "clean", ExperimentConfig(link="noiseless", defense=defense, **common)
                    )
                )
            for scenario, link in itertools.product(cfg.scenarios, cfg.links):
                if link == "symbol" and scenario.startswith("paper-"):
                    continue  # the digital link needs a physical channel
                defenses = RECEIVING if n == largest else ("none", "r-mtllmf")
                for defense in defenses:
                    role = "ablation" if n == largest else "fig2"
                    analysis = cfg.analysis if (n == largest and defense == "none") else None
                    runs.append(
                        PlannedRun(
                            role,
                            ExperimentConfig(
                                scenario=scenario,
                                link=link,
                                defense=defense,
                                analysis=analysis,
                                **common,
                            ),
                        )
                    )
            if n == largest:
                for scenario in kshot_scenarios(cfg):
                    for k in cfg.k_values:
                        if k == cfg.realign.k_per_class:
                            continue  # that run is in the ablation already
                        realign = cfg.realign.model_copy(update={"k_per_class": k})
                        runs.append(
                            PlannedRun(
                                "kshot",
                                ExperimentConfig(
                                    scenario=scenario,
                                    link=cfg.links[0],
                                    defense="r-mtllmf",
                                    **{**common, "realign": realign},
                                ),
                            )
                        )
    return runs


def code_version() -> str:
    """sha256 over the package's Python sources (any change to the code changes it)."""
    digest = hashlib.sha256()
    root = Path(str(resources.files("rmtllmf")))
    for file in sorted(root.rglob("*.py")):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def run_key(pool_id: str, cfg: ExperimentConfig) -> str:
    """The database key of a run: its resolved config and the pool it ran on."""
    return hashlib.sha256((pool_id + cfg.model_dump_json()).encode()).hexdigest()


class ResultsDB:
    """The sweep's SQLite store (one row per finished run; see module docs)."""

    def __init__(self, path: str | Path, *, reset: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if reset and self.path.exists():
            self.path.unlink()
        self.conn = sqlite3.connect(self.path, timeout=120)  # shards share the file
        self.conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS runs (
                key TEXT PRIMARY KEY, role TEXT NOT NULL, n_tasks INTEGER NOT NULL,
                config TEXT NOT NULL, result TEXT NOT NULL, seconds REAL NOT NULL,
                finished TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS lambdas (
                pool TEXT NOT NULL, n_tasks INTEGER NOT NULL, value REAL NOT NULL,
                scores TEXT NOT NULL, PRIMARY KEY (pool, n_tasks));
            """
        )
        version = code_version()
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'code_version'").fetchone()
        if row is None:
            self.conn.execute("INSERT INTO meta VALUES ('code_version', ?)", (version,))
            self.conn.commit()
        elif row[0] != version:
            self.conn.close()
            raise InputError(
                f"results database {self.path} was written by code version {row[0]}, this is "
                f"{version}; results of two code versions must not mix: use another output "
                "directory or rerun with --reset to discard the old results"
            )

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def set_meta(self, key: str, value: str) -> None:
        """Store a metadata entry (the sweep config, the pool record)."""
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        self.conn.commit()

    def meta(self, key: str) -> str | None:
        """A metadata entry, or ``None``."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def done(self) -> set[str]:
        """Keys of the finished runs."""
        return {r[0] for r in self.conn.execute("SELECT key FROM runs")}

    def add(self, key: str, role: str, result: ExperimentResult, seconds: float) -> None:
        """Commit one finished run."""
        self.conn.execute(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, datetime('now'))",
            (
                key,
                role,
                len(result.config.tasks),
                result.config.model_dump_json(),
                json.dumps(result_record(result)),
                seconds,
            ),
        )
        self.conn.commit()

    def lambda_for(self, pool_id: str, n: int) -> float | None:
        """The stored ``λ_N`` of a pool, or ``None``."""
        row = self.conn.execute(
            "SELECT value FROM lambdas WHERE pool = ? AND n_tasks = ?", (pool_id, n)
        ).fetchone()
        return None if row is None else float(row[0])

    def set_lambda(self, pool_id: str, n: int, value: float, scores: dict[float, float]) -> None:
        """Store ``λ_N`` and its validation scores."""
        self.conn.execute(
            "INSERT OR REPLACE INTO lambdas VALUES (?, ?, ?, ?)",
            (pool_id, n, value, json.dumps({str(k): v for k, v in scores.items()})),
        )
        self.conn.commit()

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every finished run: role, config and result as dicts."""
        for role, config, result, seconds in self.conn.execute(
            "SELECT role, config, result, seconds FROM runs ORDER BY rowid"
        ):
            yield {
                "role": role,
                "config": json.loads(config),
                "result": json.loads(result),
                "seconds": seconds,
            }


def result_record(result: ExperimentResult) -> dict[str, Any]:
    """A run's result as plain JSON."""
    out: dict[str, Any] = {
        "accuracy": result.accuracy,
        "normalized": result.normalized,
        "chance": result.chance,
        "mse": result.mse.tolist(),
        "error_mse": result.error_mse.tolist(),
        "received_cosine": result.received_cosine.tolist(),
        "dropped_users": result.dropped_users,
        "nonfinite_entries": result.nonfinite_entries,
    }
    if result.realign_curve:
        out["realign_curve"] = [list(p) for p in result.realign_curve]
        out["realign_kept_step"] = result.realign_kept_step
    if result.analysis is not None:
        a = result.analysis
        out["analysis"] = {
            **a.summary(),
            "wde_clean_per_task": a.wde_clean.per_task,
            "wde_received_per_task": a.wde_received.per_task,
            "reject_robust_per_task": a.rejection_robust,
            "reject_paper_per_task": a.rejection_paper,
        }
    return out


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


def export_csv(db: ResultsDB, out: str | Path) -> Path:
    """One row per run and task: config columns, accuracy, normalized accuracy, MSEs."""
    import csv

    path = Path(out)
    with closing(path.open("w", newline="")) as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "role",
                "n_tasks",
                "tasks",
                "scenario",
                "link",
                "defense",
                "k_per_class",
                "lambda",
                "seed",
                "normalized",
                "task",
                "accuracy",
                "mse",
                "error_mse",
                "seconds",
            ]
        )
        for row in db.rows():
            c, r = row["config"], row["result"]
            for q, task in enumerate(c["tasks"]):
                writer.writerow(
                    [
                        row["role"],
                        len(c["tasks"]),
                        "+".join(c["tasks"]),
                        c["scenario"],
                        c["link"],
                        c["defense"],
                        c["realign"]["k_per_class"],
                        c["merge"]["scaling"],
                        c["seed"],
                        r["normalized"],
                        task,
                        r["accuracy"][task],
                        r["mse"][q],
                        r["error_mse"][q],
                        row["seconds"],
                    ]
                )
    return path
