"""The sweep's result store.

Results go to an SQLite database keyed by the sha256 of each run's full resolved config and
the model pool's identity: a finished run is committed at once, an interrupted sweep resumes
where it stopped, and a run is never computed twice. The database records the code version
(a hash of the package's sources); opening it with different code is an error, because mixing
results of two code versions in one table would be silent corruption.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rmtllmf._io import atomic_output
from rmtllmf.errors import InputError
from rmtllmf.study.analysis import Analysis
from rmtllmf.study.experiment import ExperimentConfig, ExperimentResult


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

    def __init__(self, path: str | Path, *, reset: bool = False, read_only: bool = False) -> None:
        """Open (or create) the database at ``path``; ``read_only`` opens an existing one without
        ever writing to it (exports, merges of shards), whatever code version wrote it: the
        version it was written by is :attr:`code_version`."""
        self.path = Path(path)
        if read_only:
            self._open_read_only()
            return
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
        self.code_version = version

    def _open_read_only(self) -> None:
        """Open an existing database read-only (see :meth:`__init__`); errors name the file."""
        if not self.path.is_file():
            raise InputError(
                f"results database {self.path} does not exist; give a study's output directory "
                "or its results.db"
            )
        try:
            self.conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'code_version'").fetchone()
            self.conn.execute("SELECT count(*) FROM runs").fetchone()
        except sqlite3.DatabaseError as exc:
            raise InputError(
                f"{self.path} is not a results database ({exc}); give the results.db that "
                "rmtllmf reproduce wrote"
            ) from exc
        self.code_version = "" if row is None else str(row[0])

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

    def meta_keys(self) -> list[str]:
        """The names of the metadata entries."""
        return [str(r[0]) for r in self.conn.execute("SELECT key FROM meta")]

    def done(self) -> set[str]:
        """Keys of the finished runs."""
        return {r[0] for r in self.conn.execute("SELECT key FROM runs")}

    def run_seconds(self) -> list[float]:
        """The wall seconds of each finished run."""
        return [float(r[0]) for r in self.conn.execute("SELECT seconds FROM runs")]

    def commit(self, run: FinishedRun) -> bool:
        """Commit a run a worker returned; ``False`` (and nothing written) when a run of that
        key is stored already, so a result that arrives twice is kept once."""
        return self._insert("INSERT OR IGNORE", run)

    def _insert(self, verb: str, run: FinishedRun) -> bool:
        cur = self.conn.execute(
            f"{verb} INTO runs VALUES (?, ?, ?, ?, ?, ?, datetime('now'))",
            (run.key, run.role, run.n_tasks, run.config, run.result, run.seconds),
        )
        self.conn.commit()
        return cur.rowcount > 0

    def lambda_for(self, key: str, n: int) -> float | None:
        """The stored ``λ_N`` under ``key`` (the pool and the settings of the choice:
        :func:`~rmtllmf.study.sweep.lambda_key`), or ``None``."""
        row = self.conn.execute(
            "SELECT value FROM lambdas WHERE pool = ? AND n_tasks = ?", (key, n)
        ).fetchone()
        return None if row is None else float(row[0])

    def set_lambda(self, key: str, n: int, value: float, scores: dict[float, float]) -> None:
        """Store ``λ_N`` under ``key`` (see :meth:`lambda_for`) with its validation scores."""
        self.conn.execute(
            "INSERT OR REPLACE INTO lambdas VALUES (?, ?, ?, ?)",
            (key, n, value, json.dumps({str(k): v for k, v in scores.items()})),
        )
        self.conn.commit()

    def lambdas(self) -> dict[tuple[str, int], tuple[float, str]]:
        """Every stored ``λ_N``: (key, N) -> (value, its validation scores as JSON)."""
        return {
            (pool, int(n)): (float(value), str(scores))
            for pool, n, value, scores in self.conn.execute(
                "SELECT pool, n_tasks, value, scores FROM lambdas"
            )
        }

    def rows(self) -> Iterator[RunRecord]:
        """Every finished run, typed, in the order they were committed."""
        for key, role, config, result, seconds in self.conn.execute(
            "SELECT key, role, config, result, seconds FROM runs ORDER BY rowid"
        ):
            try:
                cfg = ExperimentConfig.model_validate_json(config)
            except ValidationError as exc:
                raise InputError(f"results database {self.path}: a run's config: {exc}") from exc
            yield RunRecord(
                role=role,
                config=cfg,
                result=RunResult.from_json(json.loads(result)),
                seconds=seconds,
                key=key,
            )


@dataclass(frozen=True)
class AnalysisRecord:
    """A run's interference analysis as stored: the flat numbers of
    :meth:`~rmtllmf.study.analysis.Analysis.summary` and the per-task dicts."""

    wde_clean: float
    wde_received: float
    reject_robust: float
    reject_paper: float
    sum_mu: float
    sum_mu_ref: float
    wde_clean_per_task: dict[str, float]
    wde_received_per_task: dict[str, float]
    reject_robust_per_task: dict[str, float]
    reject_paper_per_task: dict[str, float]

    @classmethod
    def from_analysis(cls, a: Analysis) -> AnalysisRecord:
        """The record of a finished analysis."""
        flat = a.summary()
        return cls(
            wde_clean=flat["wde_clean"],
            wde_received=flat["wde_received"],
            reject_robust=flat["reject_robust"],
            reject_paper=flat["reject_paper"],
            sum_mu=flat["sum_mu"],
            sum_mu_ref=flat["sum_mu_ref"],
            wde_clean_per_task=dict(a.wde_clean.per_task),
            wde_received_per_task=dict(a.wde_received.per_task),
            reject_robust_per_task=dict(a.rejection_robust),
            reject_paper_per_task=dict(a.rejection_paper),
        )

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AnalysisRecord:
        """Read the stored JSON object (see :meth:`to_json`)."""
        return cls(**{f.name: d[f.name] for f in fields(cls)})

    def to_json(self) -> dict[str, Any]:
        """The stored JSON object: the flat numbers, then the per-task dicts."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class RunResult:
    """What one run measured, as stored in the database (plain numbers, no arrays).

    ``realign_curve`` is empty when the run was not validated; then ``realign_kept_step`` is 0
    and neither is stored. ``chance`` is NaN for rows written before it was recorded.
    """

    accuracy: dict[str, float]
    normalized: float
    chance: float
    mse: tuple[float, ...]
    error_mse: tuple[float, ...]
    received_cosine: tuple[tuple[float, ...], ...]
    dropped_users: tuple[int, ...]
    nonfinite_entries: int
    realign_curve: tuple[tuple[int, float], ...] = ()
    realign_kept_step: int = 0
    analysis: AnalysisRecord | None = None
    uplink: dict[str, float] = field(default_factory=dict)
    """The uplink's figures for the merge's sum (``nmse``, ``sum_mse``, ``energy``;
    :func:`rmtllmf.study.experiment.uplink_figures`); empty for rows written before them."""

    @classmethod
    def from_experiment(cls, result: ExperimentResult) -> RunResult:
        """The record of a finished run."""
        curve = tuple((step, acc) for step, acc in result.realign_curve)
        return cls(
            accuracy=dict(result.accuracy),
            normalized=result.normalized,
            chance=result.chance,
            mse=tuple(result.mse.tolist()),
            error_mse=tuple(result.error_mse.tolist()),
            received_cosine=tuple(tuple(row) for row in result.received_cosine.tolist()),
            dropped_users=tuple(result.dropped_users),
            nonfinite_entries=result.nonfinite_entries,
            realign_curve=curve,
            realign_kept_step=result.realign_kept_step if curve else 0,
            analysis=None
            if result.analysis is None
            else AnalysisRecord.from_analysis(result.analysis),
            uplink=dict(result.uplink),
        )

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RunResult:
        """Read the stored JSON object (older rows lack ``chance``: NaN)."""
        return cls(
            accuracy=dict(d["accuracy"]),
            normalized=d["normalized"],
            chance=d.get("chance", float("nan")),
            mse=tuple(d["mse"]),
            error_mse=tuple(d["error_mse"]),
            received_cosine=tuple(tuple(row) for row in d["received_cosine"]),
            dropped_users=tuple(d["dropped_users"]),
            nonfinite_entries=d["nonfinite_entries"],
            realign_curve=tuple((step, acc) for step, acc in d.get("realign_curve", ())),
            realign_kept_step=d.get("realign_kept_step", 0),
            analysis=None if "analysis" not in d else AnalysisRecord.from_json(d["analysis"]),
            uplink=dict(d.get("uplink", {})),
        )

    def to_json(self) -> dict[str, Any]:
        """The stored JSON object; its keys and values never change, so old databases read."""
        out: dict[str, Any] = {
            "accuracy": self.accuracy,
            "normalized": self.normalized,
            "chance": self.chance,
            "mse": list(self.mse),
            "error_mse": list(self.error_mse),
            "received_cosine": [list(row) for row in self.received_cosine],
            "dropped_users": list(self.dropped_users),
            "nonfinite_entries": self.nonfinite_entries,
        }
        if self.realign_curve:
            out["realign_curve"] = [list(p) for p in self.realign_curve]
            out["realign_kept_step"] = self.realign_kept_step
        if self.analysis is not None:
            out["analysis"] = self.analysis.to_json()
        if self.uplink:
            out["uplink"] = self.uplink
        return out


@dataclass(frozen=True)
class RunRecord:
    """One finished run of the sweep: its plan role, resolved config, result and wall time."""

    role: str
    config: ExperimentConfig
    result: RunResult
    seconds: float
    key: str = ""
    """The run's database key (:func:`run_key`)."""


@dataclass(frozen=True)
class MergedShards:
    """What :func:`merge_databases` did: runs copied, runs already present, the sources."""

    added: int
    present: int
    sources: tuple[Path, ...]


def _same(what: str, values: Mapping[Path, str | None]) -> str | None:
    """The one value every database agrees on (``None`` if none has it); an error naming two
    databases that disagree."""
    given = [(path, value) for path, value in values.items() if value is not None]
    for path, value in given[1:]:
        if value != given[0][1]:
            raise InputError(
                f"{given[0][0]} and {path} hold different {what}s, so they are not shards of "
                "one study; merge only databases of one config, run by the same code on the "
                "same pool"
            )
    return given[0][1] if given else None


_META_NAMES = {"sweep_config": "sweep config", "pool_id": "model pool"}
"""How an error names a metadata entry the shards disagree on."""


def merge_databases(sources: Sequence[str | Path], dest: str | Path) -> MergedShards:
    """Copy every run and ``λ_N`` of the shard databases ``sources`` into ``dest`` (created if
    needed; its runs are kept): the union that the report is written over.

    The shards must be one study: written by this code version, on the same pool, with the
    same sweep config and the same ``λ_N`` (also those already in ``dest``); every other
    metadata entry (the rank spectra that shard 0 measures) is copied, and must agree where
    several databases hold it. A run found in
    several databases (its key is its config) is copied once. Everything is committed in one
    transaction, so an error leaves ``dest`` as it was; the sources are opened read-only.
    """
    if not sources:
        raise InputError("no shard databases given; pass the results.db (or directory) of each")
    target = Path(dest)
    paths = tuple(Path(p) for p in sources)
    if any(p.resolve() == target.resolve() for p in paths if p.exists()):
        raise InputError(f"{target} is one of the shards; write the union to another directory")
    opened = [ResultsDB(p, read_only=True) for p in paths]
    try:
        version = code_version()
        for db in opened:
            if db.code_version != version:
                raise InputError(
                    f"{db.path} was written by code version {db.code_version or 'unknown'}, "
                    f"this is {version}; every shard and the merge must run the same code"
                )
        keys = sorted({k for db in opened for k in db.meta_keys()} - {"code_version"})
        meta = {
            name: _same(_META_NAMES.get(name, name), {db.path: db.meta(name) for db in opened})
            for name in keys
        }
        lambdas: dict[tuple[str, int], tuple[float, str]] = {}
        for db in opened:
            for key, (value, scores) in db.lambdas().items():
                if key in lambdas and lambdas[key][0] != value:
                    raise InputError(
                        f"{db.path} chose lambda {value} for N = {key[1]}, another shard "
                        f"{lambdas[key][0]}: the shards' pools differ; build one cache and share it"
                    )
                lambdas[key] = (value, scores)
        out = ResultsDB(target)
        try:
            for name, mine in meta.items():
                _same(_META_NAMES.get(name, name), {target: out.meta(name), paths[0]: mine})
            for key, (value, _) in out.lambdas().items():
                if key in lambdas and lambdas[key][0] != value:
                    raise InputError(
                        f"{target} holds lambda {value} for N = {key[1]}, the shards "
                        f"{lambdas[key][0]}; merge into a new directory"
                    )
            before = len(out.done())
            seen = 0
            with out.conn:  # one transaction
                for db in opened:
                    rows = db.conn.execute(
                        "SELECT key, role, n_tasks, config, result, seconds, finished FROM runs "
                        "ORDER BY rowid"
                    ).fetchall()
                    seen += len(rows)
                    out.conn.executemany(
                        "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)", rows
                    )
                out.conn.executemany(
                    "INSERT OR IGNORE INTO lambdas VALUES (?, ?, ?, ?)",
                    [(k[0], k[1], v, sc) for k, (v, sc) in lambdas.items()],
                )
                for name, text in meta.items():
                    if text is not None:
                        out.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, text))
            added = len(out.done()) - before
        finally:
            out.close()
    finally:
        for db in opened:
            db.close()
    return MergedShards(added=added, present=seen - added, sources=paths)


@dataclass(frozen=True)
class FinishedRun:
    """A finished run as the database stores it (plain strings: what a worker sends back)."""

    key: str
    role: str
    n_tasks: int
    config: str
    """The run's :class:`ExperimentConfig` as JSON."""
    result: str
    """Its :class:`RunResult` as JSON."""
    seconds: float


def finished_run(key: str, role: str, result: ExperimentResult, seconds: float) -> FinishedRun:
    """The stored form of ``result`` under ``key``."""
    return FinishedRun(
        key,
        role,
        len(result.config.tasks),
        result.config.model_dump_json(),
        json.dumps(result_record(result)),
        seconds,
    )


def result_record(result: ExperimentResult) -> dict[str, Any]:
    """A run's result as plain JSON (what the database stores; :meth:`RunResult.to_json`)."""
    return RunResult.from_experiment(result).to_json()


def export_csv(rows: Iterable[RunRecord], out: str | Path) -> Path:
    """One row per run of ``rows`` and task: config columns, accuracy, normalized accuracy,
    MSEs; written whole or not at all (:func:`~rmtllmf._io.atomic_output`)."""
    path = Path(out)
    with atomic_output(path) as tmp, closing(tmp.open("w", newline="")) as fh:
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
        for row in rows:
            c, r = row.config, row.result
            for q, task in enumerate(c.tasks):
                writer.writerow(
                    [
                        row.role,
                        len(c.tasks),
                        "+".join(c.tasks),
                        c.scenario,
                        c.link,
                        c.defense,
                        c.realign.k_per_class,
                        c.merge.scaling,
                        c.seed,
                        r.normalized,
                        task,
                        r.accuracy[task],
                        r.mse[q],
                        r.error_mse[q] if len(r.error_mse) == len(c.tasks) else "",
                        row.seconds,
                    ]
                )
    return path
