"""What ``rmtllmf reproduce`` does: the whole study in one command.

Builds (or reuses) the model pool of the study's family (:mod:`rmtllmf.app.family_registry`: the
embedded ``tiny-vit`` zoo by default, ``hf-clip`` from a config such as
``configs/paper-clip-vit-b16.yaml``, the ``hf-text`` and ``hf-causal`` language pools), runs the
sweep into ``OUT/results.db`` (resumable) and writes the report, figures, ``summary.json`` and
``runs.csv`` under ``OUT``, with the fully resolved config in ``OUT/config.json``.

``--quick`` is the embedded default on a sample: task counts 2, 4 and 8 with one subset each,
seed 0 plus four headline seeds, every scenario, link and paper defense (realignment as the
library's default), the receiver defenses ``shrink`` and ``svd`` on the headline ``snr`` link,
``k`` up to 10, a smaller interference analysis (48 images per task) and ``λ`` on an 11-point
grid. The full grid is the default.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rmtllmf._io import check_output_dir_owner, mark_output_dir, write_text_atomic
from rmtllmf._progress import minutes
from rmtllmf.app.family_registry import (
    Family,
    ensure_module,
    family_names,
    family_of_section,
    get_family,
)
from rmtllmf.errors import InputError, validation_message
from rmtllmf.pools.base import ModelPool
from rmtllmf.report import write_report
from rmtllmf.study.analysis import AnalysisConfig
from rmtllmf.study.executors import (
    Executor,
    InProcess,
    PoolFactory,
    ProcessExecutor,
    RayExecutor,
)
from rmtllmf.study.plan import SweepConfig, subsets
from rmtllmf.study.spectra import SpectraConfig
from rmtllmf.study.store import MergedShards, ResultsDB, merge_databases
from rmtllmf.study.sweep import check_shard, run_sweep, shard_groups

TOP_KEYS = ("family", "sweep")
"""The study config's own keys; every other key is a family's pool section."""


class ReproduceConfig(BaseModel):
    """The study: a model family, its pool's section and the sweep run on it (frozen).

    ``family`` names a registered :class:`~rmtllmf.app.family_registry.Family`; each family's
    pool settings sit under its section (``zoo:``, ``clip:``, ``text:``, ``causal:``, ...),
    validated by the family's config model. A section of another registered family is
    validated too and ignored; a section no family owns is an error.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    family: str = "tiny-vit"
    sweep: dict[str, Any] = Field(
        default_factory=dict, description="SweepConfig fields; tasks default to the pool's"
    )

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        """The family is registered, every other key is a family's section, valid for it, and
        the family's own section is there where it has no defaults."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        name = data.get("family", "tiny-vit")
        if not isinstance(name, str) or name not in family_names():
            raise ValueError(
                f"family {name!r} is not registered; choose one of {', '.join(family_names())}"
            )
        for key in [k for k in data if k not in TOP_KEYS]:
            owner = family_of_section(key)
            if owner is None:
                sections = ", ".join(f"{get_family(n).section} ({n})" for n in family_names())
                raise ValueError(
                    f"{key}: is not a known setting (a study config holds family:, sweep: and a "
                    f"family's pool section: {sections})"
                )
            try:
                data[key] = owner.section_config(data[key])
            except ValidationError as exc:
                raise ValueError(validation_message(exc, prefix=key)) from None
        own = get_family(name)
        if own.required is not None and data.get(own.section) is None:
            raise ValueError(own.required)
        return data

    @property
    def entry(self) -> Family[Any]:
        """The study's family."""
        return get_family(self.family)

    def pool_config(self) -> BaseModel:
        """The family's pool settings: its section, or the family's defaults."""
        config: BaseModel = self.entry.section_config(
            (self.model_extra or {}).get(self.entry.section)
        )
        return config

    def resolved(self) -> dict[str, Any]:
        """The study as ``config.json`` records it: the family, its pool's resolved settings
        and the sweep section as given."""
        return {
            "family": self.family,
            self.entry.section: self.pool_config().model_dump(mode="json"),
            "sweep": self.sweep,
        }


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
    """The model pool of ``cfg`` under ``cache/<section>`` (built with ``workers`` processes
    where the family trains)."""
    family = cfg.entry
    return family.build(cfg.pool_config(), cache / family.section, progress, workers)


def pool_tasks(cfg: ReproduceConfig) -> list[str]:
    """The task suite of ``cfg``'s pool."""
    return list(cfg.entry.tasks(cfg.pool_config()))


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


def study_notices(
    cfg: ReproduceConfig,
    out: Path,
    cache: Path,
    workers: int,
    *,
    shard: tuple[int, int] = (0, 1),
    reset: bool = False,
    max_runs: int | None = None,
) -> list[str]:
    """What to say before any work: the family's pool build where it announces one, and the
    sweep's expected time when that is over a minute (per run: the mean of the runs already in
    ``out/results.db``, else the family's ``seconds_per_run``)."""
    family = cfg.entry
    lines = []
    if family.announce is not None:
        line = family.announce(cfg.pool_config(), cache / family.section, workers)
        if line:
            lines.append(line)
    scfg = sweep_config(cfg)
    owned = shard_groups(scfg, dict.fromkeys(subsets(scfg), 0.0), shard)
    planned = sum(len(group) for group in owned)
    per_run, done = family.seconds_per_run, 0
    db_file = out / "results.db"
    if db_file.is_file() and not reset:
        db = ResultsDB(db_file, read_only=True)
        try:
            seconds = db.run_seconds()
        finally:
            db.close()
        done = len(seconds)
        per_run = sum(seconds) / done if done else per_run
    todo = max(0, planned - done)
    if max_runs is not None:
        todo = min(todo, max_runs)
    total = todo * per_run / max(1, workers)
    if total > 60:
        part = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
        lines.append(
            f"the sweep{part}: {todo} run(s) to go, about {minutes(total)} at ~{per_run:.0f} s "
            f"per run on {workers} process(es); finished runs are kept in {db_file}, so Ctrl-C "
            "and the same command resume"
        )
    return lines


@dataclass(frozen=True)
class StudyPool:
    """The study's pool as a worker loads it (:data:`~rmtllmf.study.executors.PoolFactory`):
    from the cache the driver built it in, never rebuilt."""

    config: str
    """The :class:`ReproduceConfig` as JSON (:meth:`ReproduceConfig.resolved`)."""
    cache: str
    module: str = ""
    """The module that registers the study's family, imported first in a fresh worker."""

    def __call__(self) -> ModelPool:
        ensure_module(self.module)
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
        resolved = {"reproduce": cfg.resolved(), "sweep": scfg.model_dump(mode="json")}
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
                pool, StudyPool(json.dumps(cfg.resolved()), str(cache), cfg.entry.module)
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
