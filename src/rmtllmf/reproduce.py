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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rmtllmf._io import check_output_dir_owner, mark_output_dir, write_text_atomic
from rmtllmf.errors import InputError, validation_message
from rmtllmf.pools.base import ModelPool
from rmtllmf.pools.causal_pool import CausalPoolConfig, build_causal_pool
from rmtllmf.pools.clip_pool import ClipPool, ClipPoolConfig
from rmtllmf.pools.text_pool import TextPoolConfig, build_text_pool
from rmtllmf.pools.tiny_vit_pool import ZooConfig, build_zoo
from rmtllmf.report import write_report
from rmtllmf.study.analysis import AnalysisConfig
from rmtllmf.study.executors import (
    Executor,
    InProcess,
    PoolFactory,
    ProcessExecutor,
    RayExecutor,
)
from rmtllmf.study.plan import SweepConfig
from rmtllmf.study.spectra import SpectraConfig
from rmtllmf.study.store import MergedShards, ResultsDB, merge_databases
from rmtllmf.study.sweep import check_shard, run_sweep


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

    @model_validator(mode="after")
    def _family_has_its_section(self) -> ReproduceConfig:
        if self.family == "hf-clip" and self.clip is None:
            raise ValueError("family hf-clip needs a 'clip:' section (see configs/)")
        if self.family == "hf-causal" and self.causal is None:
            raise ValueError(
                "family hf-causal needs a 'causal:' section with base: (a causal LM directory "
                "or hub id; see docs/causal-lm.md)"
            )
        return self


def quick_config() -> ReproduceConfig:
    """The README's main job: the embedded default on a sample of subsets, with the receiver
    defenses ``shrink`` and ``svd`` (no labels) on the headline ``snr`` link and the rank
    spectra of the ``snr`` and ``weights`` links (docs/study.md says why ``k`` stops at 10)."""
    return ReproduceConfig(
        sweep={
            "task_counts": (2, 4, 8),
            "subsets_per_count": 1,
            "headline_seeds": (1, 2, 3, 4),
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
    if file.is_dir():
        raise InputError(
            f"config file {file} is a directory; give a YAML study config file (see configs/)"
        )
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
        scfg = SweepConfig.model_validate(fields)
    except ValidationError as exc:
        raise InputError(
            f"sweep settings: {validation_message(exc)}; fix that key under sweep:"
        ) from exc
    try:
        scfg.check()
    except InputError as exc:
        raise InputError(f"sweep settings: {exc}; fix that key under sweep:") from exc
    suite = pool_tasks(cfg)
    unknown = [t for t in scfg.tasks if t not in suite]
    if unknown:
        raise InputError(
            f"sweep.tasks: {', '.join(unknown)} not in the {cfg.family} pool's tasks "
            f"({', '.join(suite)}); fix sweep.tasks (or the pool's tasks)"
        )
    return scfg


@dataclass(frozen=True)
class StudyPool:
    """The study's pool as a worker loads it (:data:`~rmtllmf.study.executors.PoolFactory`):
    from the cache the driver built it in, never rebuilt."""

    config: str
    """The :class:`ReproduceConfig` as JSON."""
    cache: str

    def __call__(self) -> ModelPool:
        cfg = ReproduceConfig.model_validate_json(self.config)
        return build_pool(cfg, Path(self.cache), progress=False)


@dataclass(frozen=True)
class Scale:
    """How the sweep's runs execute (:mod:`rmtllmf.study.executors`): ``executor`` ``process``
    (``workers`` local processes; ``1``: the driver itself) or ``ray`` (a local Ray with
    ``workers`` CPUs, or the cluster at ``address``), each run on ``cpus_per_run`` CPUs and
    ``gpus_per_run`` GPUs (Ray; fractions share one)."""

    executor: Literal["process", "ray"] = "process"
    workers: int = 1
    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0

    def build(self, pool: ModelPool, factory: PoolFactory) -> Executor:
        """The executor, on ``pool`` (in this process) or on ``factory`` (workers)."""
        threads = max(1, int(self.cpus_per_run))
        if self.executor == "ray":
            return RayExecutor(
                factory, self.workers, self.address, self.cpus_per_run, self.gpus_per_run
            )
        if self.workers > 1:
            return ProcessExecutor(factory, self.workers, threads)
        return InProcess(pool)


COMMAND = "reproduce"
"""The name under which the study marks its output directories (:mod:`rmtllmf._io`)."""


def _check_out(out: Path, force: bool) -> Path:
    """The output directory, refused (before any work) when it is a file, or a directory that
    holds files the study did not write, unless ``force`` (:func:`check_output_dir_owner`)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a directory; give a directory")
    return check_output_dir_owner(out, COMMAND, force=force)


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
    scale: Scale | None,
    force: bool,
) -> ResultsDB:
    """Build the pool, write ``config.json`` and run the sweep (or ``shard`` of it) into
    ``out/results.db``; returns the open database."""
    _check_out(out, force)
    scfg = sweep_config(cfg)
    check_shard(shard)
    db_file = out / "results.db"
    if db_file.is_file() and not reset:  # another code version's results: said before any work
        ResultsDB(db_file).close()
    pool = build_pool(cfg, Path(cache), progress=progress, workers=workers)
    mark_output_dir(out, COMMAND)  # nothing is written under out before the pool stands
    db = ResultsDB(db_file, reset=reset)
    try:
        resolved = {"reproduce": cfg.model_dump(mode="json"), "sweep": scfg.model_dump(mode="json")}
        write_text_atomic(out / "config.json", json.dumps(resolved, indent=2))
        run_sweep(
            pool,
            pool.pool_id,
            scfg,
            db,
            progress=progress,
            max_runs=max_runs,
            shard=shard,
            executor=(scale or Scale(workers=workers)).build(
                pool, StudyPool(cfg.model_dump_json(), str(cache))
            ),
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
    scale: Scale | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run the study of ``cfg`` into ``out`` and return ``summary.json``'s content.

    ``workers > 1`` builds the zoo in that many processes and runs the sweep in as many
    single-threaded ones; ``scale`` chooses the sweep's executor otherwise (e.g. Ray).
    Only this process writes the database. ``out`` is new, empty or an earlier study's output
    (``force`` writes into any directory, replacing only the files the study writes).
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
        scale=scale,
        force=force,
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
    scale: Scale | None = None,
    force: bool = False,
) -> int:
    """Run shard ``(i, n)`` of the study into ``out/results.db`` (no report: a shard holds a
    part of the plan; see :func:`merge_shards`); returns the runs the database holds.

    Shard ``i`` of ``n`` owns a share of the plan's channel-use groups balanced by estimated
    cost (:func:`~rmtllmf.study.sweep.pending_runs`), so ``n`` machines that each run one
    shard, with the same code and config, cover the plan exactly once, and each resumes on its
    own.
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
        scale=scale,
        force=force,
    )
    try:
        return len(db.done())
    finally:
        db.close()


def _shard_db(path: Path) -> Path:
    """A shard given as its output directory or its ``results.db``."""
    return path / "results.db" if path.is_dir() else path


def merge_shards(
    shards: Sequence[str | Path], out: str | Path, *, force: bool = False
) -> tuple[MergedShards, dict[str, Any]]:
    """Combine the shards' databases into ``out/results.db`` (:func:`merge_databases`: one
    study, one code version, each run once), copy their ``config.json`` and write the report
    over the union; returns what was merged and ``summary.json``'s content (whose
    ``coverage`` says how much of the plan the union holds)."""
    out = _check_out(Path(out), force)
    dbs = [_shard_db(Path(p)) for p in shards]
    seen: dict[Path, Path] = {}
    for given, db_file in zip(shards, dbs, strict=True):
        if db_file.resolve() in seen:
            raise InputError(
                f"--merge-shards names one shard twice ({seen[db_file.resolve()]} and {given}); "
                "give each shard's directory once"
            )
        seen[db_file.resolve()] = Path(given)
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
    for db_file in dbs:  # each shard readable before anything is written
        ResultsDB(db_file, read_only=True).close()
    mark_output_dir(out, COMMAND)
    merged = merge_databases(dbs, out / "results.db")
    if configs:
        write_text_atomic(out / "config.json", configs.pop())
    db = ResultsDB(out / "results.db")
    try:
        return merged, write_report(db, out)
    finally:
        db.close()
