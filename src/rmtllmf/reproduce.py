"""``rmtllmf reproduce``: the whole study in one command.

Builds (or reuses) the model pool — the embedded ``tiny-vit`` zoo by default, ``hf-clip``
from a YAML config such as ``configs/paper-clip-vit-b16.yaml``, or the ``hf-text`` language
pool (MiniLM on the embedded text suite, ``configs/minilm-text.yaml``) — runs the sweep into
``OUT/results.db`` (resumable) and writes the report, figures, ``summary.json`` and
``runs.csv`` under ``OUT``, with the fully resolved config in ``OUT/config.json``.

``--quick`` is the embedded default on a sample: task counts 2, 4 and 8 with one subset each,
one seed, every scenario, link and paper defense (realignment as the library's default), the
receiver defenses ``shrink`` and ``svd`` on the headline ``snr`` link, ``k`` up to 10, a
smaller interference analysis (48 images per task) and ``λ`` on an 11-point grid. The full grid
is the default.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rmtllmf._io import write_text_atomic
from rmtllmf._progress import progress_bar
from rmtllmf.errors import InputError, validation_message
from rmtllmf.pools.base import ModelPool
from rmtllmf.pools.clip import ClipPool, ClipPoolConfig
from rmtllmf.pools.hf_causal import CausalPoolConfig, build_causal_pool
from rmtllmf.pools.hf_text import TextPoolConfig, build_text_pool
from rmtllmf.pools.tiny_vit import ZooConfig, build_zoo
from rmtllmf.report import write_report
from rmtllmf.study.analysis import AnalysisConfig
from rmtllmf.study.plan import SweepConfig
from rmtllmf.study.spectra import SpectraConfig
from rmtllmf.study.store import MergedShards, ResultsDB, merge_databases
from rmtllmf.study.sweep import (
    check_shard,
    ensure_lambdas,
    ensure_spectra,
    pending_runs,
    run_sweep,
)


class ReproduceConfig(BaseModel):
    """The study: a model pool and the sweep run on it (frozen)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: Literal["tiny-vit", "hf-clip", "hf-text", "hf-causal"] = "tiny-vit"
    zoo: ZooConfig = ZooConfig()
    clip: ClipPoolConfig | None = None
    text: TextPoolConfig = TextPoolConfig()
    causal: CausalPoolConfig | None = Field(
        None, description="the hf-causal pool; its base (a causal LM) is required"
    )
    sweep: dict[str, Any] = Field(
        default_factory=dict, description="SweepConfig fields; tasks default to the pool's"
    )


def quick_config() -> ReproduceConfig:
    """The README's main job: the embedded default on a sample of subsets, with the receiver
    defenses ``shrink`` and ``svd`` (no labels) on the headline ``snr`` link and the rank
    spectra of the ``snr`` and ``weights`` links (docs/study.md says why ``k`` stops at 10)."""
    return ReproduceConfig(
        sweep={
            "task_counts": (2, 4, 8),
            "subsets_per_count": 1,
            "k_values": (1, 5, 10),
            "analysis": AnalysisConfig(samples=48, probes=2).model_dump(),
            "lambda_grid": tuple(round(0.1 * i, 1) for i in range(11)),
            "extra_defenses": ("shrink", "svd"),
            "extra_defense_links": ("snr",),
            "spectra": SpectraConfig(links=("snr", "weights")).model_dump(),
        }
    )


def load_config(path: str | Path) -> ReproduceConfig:
    """A :class:`ReproduceConfig` from YAML (safe loader); errors name the bad key."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise InputError(
            f"config file {file} does not exist; give a YAML study config (see configs/)"
        )
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise InputError(
            f"{file} is not valid YAML{line}; fix the file (a study config is a mapping of "
            "keys such as family:, zoo:, sweep:)"
        ) from exc
    if raw is None or raw == {}:
        raise InputError(
            f"config file {file} is empty; write the settings to change (see configs/), or drop "
            "--config to run the default study"
        )
    if not isinstance(raw, dict):
        raise InputError(
            f"{file} holds a {type(raw).__name__}, not a mapping of settings; write keys such "
            "as family:, zoo:, sweep: (see configs/)"
        )
    try:
        return ReproduceConfig.model_validate(raw)
    except ValidationError as exc:
        raise InputError(f"{file}: {validation_message(exc)}; fix that key in the file") from exc


def build_pool(cfg: ReproduceConfig, cache: Path, *, progress: bool, workers: int = 1) -> ModelPool:
    """The model pool of ``cfg`` (built with ``workers`` processes where the family trains)."""
    if cfg.family == "hf-clip":
        if cfg.clip is None:
            raise InputError("family hf-clip needs a 'clip:' section (see configs/)")
        return ClipPool(cfg.clip, cache_dir=cache / "clip")
    if cfg.family == "hf-text":
        return build_text_pool(cache / "text", cfg.text, progress=progress, workers=workers)
    if cfg.family == "hf-causal":
        if cfg.causal is None:
            raise InputError(
                "family hf-causal needs a 'causal:' section with base: (a causal LM directory "
                "or hub id; see docs/causal-lm.md)"
            )
        return build_causal_pool(cache / "causal", cfg.causal, progress=progress, workers=workers)
    return build_zoo(cache / "zoo", cfg.zoo, progress=progress, workers=workers)


def pool_tasks(cfg: ReproduceConfig) -> list[str]:
    """The task suite of ``cfg``'s pool."""
    if cfg.family == "hf-clip" and cfg.clip is not None:
        return list(cfg.clip.tasks)
    if cfg.family == "hf-text":
        return list(cfg.text.tasks)
    if cfg.family == "hf-causal" and cfg.causal is not None:
        return list(cfg.causal.tasks)
    return list(cfg.zoo.tasks)


def sweep_config(cfg: ReproduceConfig) -> SweepConfig:
    """The resolved sweep: the pool's tasks unless given, and every default filled in."""
    fields = {"tasks": pool_tasks(cfg), **cfg.sweep}
    if "task_counts" not in cfg.sweep:
        fields["task_counts"] = tuple(range(2, len(fields["tasks"]) + 1)) or (1,)
    try:
        return SweepConfig.model_validate(fields)
    except ValidationError as exc:
        raise InputError(
            f"sweep settings: {validation_message(exc)}; fix that key under sweep:"
        ) from exc


def _sweep_shard(cfg_json: str, db_path: str, cache: str, shard: int, n_shards: int) -> int:
    """Worker process: one shard of the sweep, single-threaded, into the shared database."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    cfg = ReproduceConfig.model_validate_json(cfg_json)
    pool = build_pool(cfg, Path(cache), progress=False)
    db = ResultsDB(db_path)
    try:  # numpy's BLAS on one thread too: two busy 2-thread pools on 2 cores crawl
        with threadpool_limits(limits=1):
            return run_sweep(pool, pool.pool_id, sweep_config(cfg), db, shard=(shard, n_shards))
    finally:
        db.close()


def _run_parallel(
    cfg: ReproduceConfig,
    db: ResultsDB,
    cache: Path,
    total: int,
    workers: int,
    progress: bool,
    shard: tuple[int, int] = (0, 1),
) -> None:
    """The sweep (or its ``shard``) in ``workers`` processes: worker ``j`` of shard ``(i, n)``
    runs sub-shard ``(i + n j, n workers)``, so the workers split the shard exactly."""
    ctx = multiprocessing.get_context("spawn")
    start = len(db.done())
    i, n = shard
    cfg_json = cfg.model_dump_json()
    with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        futures = [
            ex.submit(_sweep_shard, cfg_json, str(db.path), str(cache), i + n * j, n * workers)
            for j in range(workers)
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


def _check_out(out: Path) -> Path:
    """The output directory, refused (before any work) when it is a file."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a directory; give a directory")
    return out


def _run_study(
    cfg: ReproduceConfig,
    out: Path,
    *,
    cache: str | Path,
    reset: bool,
    progress: bool,
    max_runs: int | None,
    workers: int,
    shard: tuple[int, int],
) -> ResultsDB:
    """Build the pool, write ``config.json`` and run the sweep (or ``shard`` of it) into
    ``out/results.db``; returns the open database."""
    _check_out(out)
    scfg = sweep_config(cfg)
    check_shard(shard)
    out.mkdir(parents=True, exist_ok=True)
    db = ResultsDB(out / "results.db", reset=reset)
    try:
        pool = build_pool(cfg, Path(cache), progress=progress, workers=workers)
        resolved = {"reproduce": cfg.model_dump(mode="json"), "sweep": scfg.model_dump(mode="json")}
        write_text_atomic(out / "config.json", json.dumps(resolved, indent=2))
        if workers > 1 and max_runs is None:
            db.set_meta("sweep_config", scfg.model_dump_json())
            db.set_meta("pool_id", pool.pool_id)
            lambdas = ensure_lambdas(pool, pool.pool_id, scfg, db)
            if shard[0] == 0:  # here, so that the workers' shard 0 finds them stored
                ensure_spectra(pool, pool.pool_id, scfg, db, lambdas)
            total = sum(len(g) for g in pending_runs(pool.pool_id, scfg, db, lambdas, shard))
            _run_parallel(cfg, db, Path(cache), total, workers, progress, shard)
        else:
            run_sweep(
                pool, pool.pool_id, scfg, db, progress=progress, max_runs=max_runs, shard=shard
            )
    except BaseException:
        db.close()
        raise
    return db


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
    db = _run_study(
        cfg,
        out,
        cache=cache,
        reset=reset,
        progress=progress,
        max_runs=max_runs,
        workers=workers,
        shard=(0, 1),
    )
    try:
        return write_report(db, out)
    finally:
        db.close()


def reproduce_shard(
    cfg: ReproduceConfig,
    out: str | Path,
    shard: tuple[int, int],
    *,
    cache: str | Path,
    reset: bool = False,
    progress: bool = True,
    max_runs: int | None = None,
    workers: int = 1,
) -> int:
    """Run shard ``(i, n)`` of the study into ``out/results.db`` (no report: a shard holds a
    part of the plan; see :func:`merge_shards`); returns the runs the database holds.

    Shard ``i`` of ``n`` owns the channel-use groups ``g`` of the plan with ``g % n == i``
    (:func:`~rmtllmf.study.sweep.pending_runs`), so ``n`` machines that each run one shard, with
    the same code and config, cover the plan exactly once, and each resumes on its own.
    """
    db = _run_study(
        cfg,
        Path(out),
        cache=cache,
        reset=reset,
        progress=progress,
        max_runs=max_runs,
        workers=workers,
        shard=shard,
    )
    try:
        return len(db.done())
    finally:
        db.close()


def _shard_db(path: Path) -> Path:
    """A shard given as its output directory or its ``results.db``."""
    return path / "results.db" if path.is_dir() else path


def merge_shards(
    shards: Sequence[str | Path], out: str | Path
) -> tuple[MergedShards, dict[str, Any]]:
    """Combine the shards' databases into ``out/results.db`` (:func:`merge_databases`: one
    study, one code version, each run once), copy their ``config.json`` and write the report
    over the union; returns what was merged and ``summary.json``'s content."""
    out = _check_out(Path(out))
    dbs = [_shard_db(Path(p)) for p in shards]
    configs = {
        (p.parent / "config.json").read_text(encoding="utf-8")
        for p in dbs
        if (p.parent / "config.json").is_file()
    }
    if len(configs) > 1:
        raise InputError(
            "the shards' config.json files differ: they ran different studies; merge the shards "
            "of one config"
        )
    merged = merge_databases(dbs, out / "results.db")
    if configs:
        write_text_atomic(out / "config.json", configs.pop())
    db = ResultsDB(out / "results.db")
    try:
        return merged, write_report(db, out)
    finally:
        db.close()
