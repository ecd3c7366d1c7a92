"""``rmtllmf reproduce``: the whole study in one command.

Builds (or reuses) the model pool — the embedded ``tiny-vit`` zoo by default, or ``hf-clip``
from a YAML config such as ``configs/paper-clip-vit-b16.yaml`` — runs the sweep into
``OUT/results.db`` (resumable) and writes the report, figures, ``summary.json`` and
``runs.csv`` under ``OUT``, with the fully resolved config in ``OUT/config.json``.

``--quick`` is the embedded default on a sample: task counts 2, 4 and 8 with one subset each,
one seed, every scenario, link and defense (realignment as the library's default), a smaller
interference analysis (48 images per task) and ``λ`` on an 11-point grid. The full grid is the
default.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rmtllmf._io import write_text_atomic
from rmtllmf._progress import progress_bar
from rmtllmf.errors import InputError
from rmtllmf.pools.base import ModelPool
from rmtllmf.pools.clip import ClipPool, ClipPoolConfig
from rmtllmf.pools.tiny_vit import ZooConfig, build_zoo
from rmtllmf.report import write_report
from rmtllmf.study.analysis import AnalysisConfig
from rmtllmf.study.plan import SweepConfig
from rmtllmf.study.store import ResultsDB
from rmtllmf.study.sweep import ensure_lambdas, pending_runs, run_sweep


class ReproduceConfig(BaseModel):
    """The study: a model pool and the sweep run on it (frozen)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: Literal["tiny-vit", "hf-clip"] = "tiny-vit"
    zoo: ZooConfig = ZooConfig()
    clip: ClipPoolConfig | None = None
    sweep: dict[str, Any] = Field(
        default_factory=dict, description="SweepConfig fields; tasks default to the pool's"
    )


def quick_config() -> ReproduceConfig:
    """The README's main job: the embedded default on a sample of subsets."""
    return ReproduceConfig(
        sweep={
            "task_counts": (2, 4, 8),
            "subsets_per_count": 1,
            "k_values": (1, 5, 10, 20),
            "analysis": AnalysisConfig(samples=48, probes=2).model_dump(),
            "lambda_grid": tuple(round(0.1 * i, 1) for i in range(11)),
        }
    )


def load_config(path: str | Path) -> ReproduceConfig:
    """A :class:`ReproduceConfig` from YAML (safe loader); errors name the bad key."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise InputError(f"config file {file} does not exist")
    try:
        raw = yaml.safe_load(file.read_text()) or {}
        return ReproduceConfig.model_validate(raw)
    except yaml.YAMLError as exc:
        raise InputError(f"{file} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise InputError(f"{file}: {exc}") from exc


def build_pool(cfg: ReproduceConfig, cache: Path, *, progress: bool) -> ModelPool:
    """The model pool of ``cfg``."""
    if cfg.family == "hf-clip":
        if cfg.clip is None:
            raise InputError("family hf-clip needs a 'clip:' section (see configs/)")
        return ClipPool(cfg.clip, cache_dir=cache / "clip")
    return build_zoo(cache / "zoo", cfg.zoo, progress=progress)


def sweep_config(cfg: ReproduceConfig) -> SweepConfig:
    """The resolved sweep: the pool's tasks unless given, and every default filled in."""
    tasks = list(cfg.clip.tasks) if cfg.family == "hf-clip" and cfg.clip else list(cfg.zoo.tasks)
    fields = {"tasks": tasks, **cfg.sweep}
    if "task_counts" not in cfg.sweep:
        fields["task_counts"] = tuple(range(2, len(fields["tasks"]) + 1)) or (1,)
    try:
        return SweepConfig.model_validate(fields)
    except ValidationError as exc:
        raise InputError(f"sweep settings: {exc}") from exc


def _sweep_shard(cfg_json: str, db_path: str, cache: str, shard: int, n_shards: int) -> int:
    """Worker process: one shard of the sweep, single-threaded, into the shared database."""
    import torch

    torch.set_num_threads(1)
    cfg = ReproduceConfig.model_validate_json(cfg_json)
    pool = build_pool(cfg, Path(cache), progress=False)
    db = ResultsDB(db_path)
    try:
        return run_sweep(pool, pool.pool_id, sweep_config(cfg), db, shard=(shard, n_shards))
    finally:
        db.close()


def _run_parallel(
    cfg: ReproduceConfig, db: ResultsDB, cache: Path, total: int, workers: int, progress: bool
) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = len(db.done())
    with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        futures = [
            ex.submit(_sweep_shard, cfg.model_dump_json(), str(db.path), str(cache), i, workers)
            for i in range(workers)
        ]
        with progress_bar(progress and total > 0, "sweep", total) as advance:
            seen = 0
            while not all(f.done() for f in futures):
                time.sleep(1.0)
                now = len(db.done()) - start
                for _ in range(now - seen):
                    advance(f"sweep ({workers} processes)")
                seen = now
        for f in futures:
            f.result()  # re-raise a worker's error


def reproduce(
    cfg: ReproduceConfig,
    out: str | Path,
    *,
    cache: str | Path,
    reset: bool = False,
    progress: bool = True,
    max_runs: int | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Run the study of ``cfg`` into ``out`` and return ``summary.json``'s content.

    ``workers > 1`` runs the sweep in that many single-threaded processes sharing the database
    (CPU pools; the zoo is built in parallel too).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scfg = sweep_config(cfg)
    db = ResultsDB(out / "results.db", reset=reset)
    try:
        if cfg.family == "tiny-vit":
            pool: ModelPool = build_zoo(
                Path(cache) / "zoo", cfg.zoo, progress=progress, workers=workers
            )
        else:
            pool = build_pool(cfg, Path(cache), progress=progress)
        resolved = {"reproduce": cfg.model_dump(mode="json"), "sweep": scfg.model_dump(mode="json")}
        write_text_atomic(out / "config.json", json.dumps(resolved, indent=2))
        if workers > 1 and max_runs is None:
            db.set_meta("sweep_config", scfg.model_dump_json())
            db.set_meta("pool_id", pool.pool_id)
            lambdas = ensure_lambdas(pool, pool.pool_id, scfg, db)
            total = sum(len(g) for g in pending_runs(pool.pool_id, scfg, db, lambdas))
            _run_parallel(cfg, db, Path(cache), total, workers, progress)
        else:
            run_sweep(pool, pool.pool_id, scfg, db, progress=progress, max_runs=max_runs)
        return write_report(db, out)
    finally:
        db.close()
