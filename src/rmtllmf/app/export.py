"""A study's runs in the trackers people keep their runs in: TensorBoard and MLflow, offline.

:func:`export_study` reads a study's ``results.db`` (read-only) and writes one tracker run per
finished run with the library's own writer:

* **params** (MLflow) / **hparams** (TensorBoard): the run's resolved config flattened to
  dotted keys (``link``, ``merge.scaling``, ``channel.n_users``, ...), plus ``role`` and
  ``n_tasks``; lists as JSON, ``None`` as ``"none"``;
* **metrics**: ``normalized`` (normalized accuracy), ``accuracy/<task>``, ``mse/<task>`` and
  ``error_mse/<task>`` (the user sending that task), their means, ``chance``, ``seconds``, the
  interference analysis (``analysis/*``) where the run has one, the uplink's figures for the
  merge's sum (``uplink/*``), and the realignment's
  validation curve as ``realign/val_accuracy`` over its steps; non-finite values are left out;
* one more run, ``study``, holds the report: its figures (TensorBoard images; MLflow
  artifacts, PNG and PDF), ``report.md``, ``summary.json`` and ``config.json``.

Each run is named ``<role>-n<N>-<scenario>-<link>-<defense>-k<k>-s<seed>-<key>`` (``key``: the
first characters of its database key) and tagged with the whole key, so exporting again (after
more shards were merged, say) adds only the runs that are new. TensorBoard writes each run into
a hidden folder renamed into place when complete; MLflow marks a run FINISHED last, and an
unfinished run of an interrupted export is replaced.

MLflow writes to a local file store (``file:`` URI, no server). MLflow 3 keeps that backend in
maintenance mode and asks for ``MLFLOW_ALLOW_FILE_STORE=true``, which the export sets for its own
process when unset; set it too for ``mlflow ui --backend-store-uri DIR`` or a reader.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rmtllmf._io import atomic_directory, check_output_dir_owner, mark_output_dir
from rmtllmf._progress import progress_bar
from rmtllmf.errors import InputError
from rmtllmf.study.store import ResultsDB, RunRecord

Tracker = Literal["tensorboard", "mlflow"]
Param = str | int | float | bool

RUN_KEY_TAG = "rmtllmf.run_key"
"""MLflow tag holding a run's database key (how a second export knows what is there)."""
STUDY_TAG = "rmtllmf.study"
"""MLflow tag of the run that holds the report's files."""
ARTIFACTS = ("report.md", "summary.json", "config.json")
"""The report's text files exported beside its figures."""
INSTALL_HINT = "install the trackers with: pip install 'rmtllmf[track]'"


@dataclass(frozen=True)
class TrackedRun:
    """One finished run as a tracker sees it."""

    name: str
    key: str
    params: dict[str, Param]
    metrics: dict[str, float]
    curves: dict[str, tuple[tuple[int, float], ...]]


@dataclass(frozen=True)
class Exported:
    """What :func:`export_study` did: runs written, runs already there, and how to look."""

    written: int
    skipped: int
    out: Path
    hint: str


def _clean_key(name: str) -> str:
    """A metric or param name both trackers accept (letters, digits, ``_-./`` and spaces)."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def flatten(value: Any, prefix: str = "") -> dict[str, Param]:
    """Nested JSON as dotted keys; lists as JSON text, ``None`` as ``"none"``."""
    if isinstance(value, Mapping):
        out: dict[str, Param] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if value is None:
        return {prefix: "none"}
    if isinstance(value, bool | int | float | str):
        return {prefix: value}
    return {prefix: json.dumps(value)}


def run_params(row: RunRecord) -> dict[str, Param]:
    """A run's params: its role, task count and flattened resolved config (tasks as ``a+b``)."""
    config = row.config.model_dump(mode="json")
    config["tasks"] = "+".join(row.config.tasks)
    params = {"role": row.role, "n_tasks": len(row.config.tasks), **flatten(config)}
    return {_clean_key(k): v for k, v in params.items()}


def run_metrics(row: RunRecord) -> dict[str, float]:
    """A run's numbers (see module docs); only finite values."""
    r, tasks = row.result, row.config.tasks
    metrics: dict[str, float] = {
        "normalized": r.normalized,
        "chance": r.chance,
        "seconds": row.seconds,
        "nonfinite_entries": float(r.nonfinite_entries),
        "dropped_users": float(len(r.dropped_users)),
    }
    if r.accuracy:
        metrics["mean_accuracy"] = sum(r.accuracy.values()) / len(r.accuracy)
    for task, acc in r.accuracy.items():
        metrics[f"accuracy/{task}"] = acc
    for name, values in (("mse", r.mse), ("error_mse", r.error_mse)):
        per_user = len(values) == len(tasks)  # an AirComp run's error is its sum's
        for task, v in zip(tasks, values, strict=False) if per_user else ():
            metrics[f"{name}/{task}"] = v
        if values:
            metrics[f"mean_{name}"] = sum(values) / len(values)
    if r.analysis is not None:
        for name, v in r.analysis.to_json().items():
            if isinstance(v, int | float):
                metrics[f"analysis/{name}"] = float(v)
    if r.realign_curve:
        metrics["realign/kept_step"] = float(r.realign_kept_step)
    for name, v in r.uplink.items():
        metrics[f"uplink/{name}"] = v
    return {_clean_key(k): float(v) for k, v in metrics.items() if math.isfinite(v)}


def tracked_run(row: RunRecord) -> TrackedRun:
    """The tracker view of one finished run."""
    c = row.config
    name = (
        f"{row.role}-n{len(c.tasks)}-{c.scenario}-{c.link}-{c.defense}-"
        f"k{c.realign.k_per_class}-s{c.seed}-{row.key[:10]}"
    )
    curve = tuple((int(s), float(a)) for s, a in row.result.realign_curve if math.isfinite(a))
    return TrackedRun(
        name=re.sub(r"[^\w\-.+]", "_", name),
        key=row.key,
        params=run_params(row),
        metrics=run_metrics(row),
        curves={"realign/val_accuracy": curve} if curve else {},
    )


def study_paths(results: str | Path) -> tuple[Path, Path]:
    """The database and the report folder of ``results`` (a study's folder or its
    ``results.db``), checked to exist."""
    path = Path(results)
    if path.is_dir():
        db = path / "results.db"
        if not db.is_file():
            raise InputError(
                f"{path} holds no results.db; give the --out directory of rmtllmf reproduce"
            )
        return db, path
    if not path.exists():
        raise InputError(
            f"{path} does not exist; give a study's output directory or its results.db"
        )
    return path, path.parent


def report_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The report's figures (PNG, PDF) and text files under ``folder`` (may be none)."""
    figures = sorted(p for p in folder.glob("*") if p.suffix in (".png", ".pdf") and p.is_file())
    texts = [folder / name for name in ARTIFACTS if (folder / name).is_file()]
    return figures, texts


def _tensorboard_writer() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or an error that says what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise InputError(f"--to tensorboard needs the tensorboard package; {INSTALL_HINT}") from exc
    return SummaryWriter


def export_tensorboard(
    runs: Sequence[TrackedRun], folder: Path, out: Path, *, progress: bool = False
) -> tuple[int, int]:
    """Write each run as a TensorBoard run ``out/<name>`` (hparams, scalars) and the report as
    ``out/study`` (figures as images, report.md and summary.json as text); runs whose folder
    exists are kept. Returns (written, skipped)."""
    writer_class = _tensorboard_writer()
    from torch.utils.tensorboard.summary import hparams

    out.mkdir(parents=True, exist_ok=True)
    todo = [r for r in runs if not (out / r.name).exists()]

    def write_run(run: TrackedRun, tmp: Path) -> None:
        writer = writer_class(log_dir=str(tmp))
        try:
            for summary in hparams(dict(run.params), dict(run.metrics)):  # type: ignore[no-untyped-call]
                writer.file_writer.add_summary(summary)
            for tag, value in run.metrics.items():
                writer.add_scalar(tag, value, 0)
            for tag, curve in run.curves.items():
                for step, value in curve:
                    writer.add_scalar(tag, value, step)
        finally:
            writer.close()

    with progress_bar(progress and bool(todo), "export to TensorBoard", len(todo)) as advance:
        for run in todo:
            with atomic_directory(out / run.name) as tmp:
                write_run(run, tmp)
            advance(f"export to TensorBoard: {run.name}")
    figures, texts = report_files(folder)
    if (figures or texts) and not (out / "study").exists():

        def write_study(tmp: Path) -> None:
            import numpy as np
            from PIL import Image

            writer = writer_class(log_dir=str(tmp))
            try:
                for fig in (f for f in figures if f.suffix == ".png"):
                    with Image.open(fig) as img:
                        pixels = np.asarray(img.convert("RGB"))
                    writer.add_image(fig.stem, pixels, 0, dataformats="HWC")
                for text in texts:
                    body = text.read_text(encoding="utf-8")
                    if text.suffix == ".json":
                        body = f"```json\n{body}\n```"
                    writer.add_text(text.name, body, 0)
            finally:
                writer.close()

        with atomic_directory(out / "study") as tmp:
            write_study(tmp)
    return len(todo), len(runs) - len(todo)


def _mlflow_client(out: Path) -> Any:
    """An ``MlflowClient`` on the local file store ``out``."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise InputError(f"--to mlflow needs mlflow (or mlflow-skinny); {INSTALL_HINT}") from exc
    out.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=out.resolve().as_uri())


def _all_runs(client: Any, experiment_id: str) -> list[Any]:
    """Every run of the experiment (all pages)."""
    found: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def export_mlflow(
    runs: Sequence[TrackedRun],
    folder: Path,
    out: Path,
    experiment: str,
    *,
    progress: bool = False,
) -> tuple[int, int]:
    """Write each run into the MLflow file store ``out``, experiment ``experiment``, as a child
    of the ``study`` run that holds the report's files; runs already FINISHED there (by their
    key tag) are kept, unfinished ones from an interrupted export replaced. Returns (written,
    skipped)."""
    client = _mlflow_client(out)
    from mlflow.entities import Metric, Param, RunStatus, RunTag

    found = client.get_experiment_by_name(experiment)
    exp_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    existing = _all_runs(client, exp_id)
    finished = RunStatus.to_string(RunStatus.FINISHED)
    done: set[str] = set()
    study_id = None
    for r in existing:
        tags = r.data.tags
        if r.info.status != finished:
            client.delete_run(r.info.run_id)
        elif STUDY_TAG in tags:
            study_id = r.info.run_id
        elif RUN_KEY_TAG in tags:
            done.add(tags[RUN_KEY_TAG])
    if study_id is None:
        study = client.create_run(exp_id, run_name="study", tags={STUDY_TAG: "1"})
        study_id = study.info.run_id
        figures, texts = report_files(folder)
        for file in [*figures, *texts]:
            client.log_artifact(study_id, str(file))
        client.set_terminated(study_id)
    todo = [r for r in runs if r.key not in done]
    now = int(time.time() * 1000)
    with progress_bar(progress and bool(todo), "export to MLflow", len(todo)) as advance:
        for run in todo:
            tags = {RUN_KEY_TAG: run.key, "mlflow.parentRunId": study_id}
            created = client.create_run(exp_id, run_name=run.name, tags=tags)
            run_id = created.info.run_id
            params = [Param(k, str(v)) for k, v in run.params.items()]
            metrics = [Metric(k, v, now, 0) for k, v in run.metrics.items()]
            metrics += [
                Metric(tag, value, now, step)
                for tag, curve in run.curves.items()
                for step, value in curve
            ]
            for chunk in _chunks(params, 100):
                client.log_batch(run_id, params=list(chunk))
            for chunk in _chunks(metrics, 1000):
                client.log_batch(run_id, metrics=list(chunk))
            client.log_batch(run_id, tags=[RunTag("rmtllmf.role", str(run.params["role"]))])
            client.set_terminated(run_id)
            advance(f"export to MLflow: {run.name}")
    return len(todo), len(runs) - len(todo)


def export_study(
    results: str | Path,
    to: Tracker,
    out: str | Path,
    *,
    experiment: str | None = None,
    progress: bool = True,
    force: bool = False,
) -> Exported:
    """Export the study at ``results`` (its folder or its ``results.db``) to ``to`` under
    ``out`` (see module docs). The database is opened read-only; nothing under ``results``
    changes. ``out`` is new, empty or an earlier export's (``force``: any directory; nothing
    in it is replaced)."""
    if to not in ("tensorboard", "mlflow"):
        raise InputError(f"--to {to!r}: choose tensorboard or mlflow")
    db_path, folder = study_paths(results)
    target = Path(out)
    if target.exists() and not target.is_dir():
        raise InputError(f"--out {target} is a file, not a directory; give a directory")
    inside = [db_path.resolve(), folder.resolve()]
    if target.resolve() in inside:
        raise InputError(f"--out {target} is the study itself; give another directory")
    check_output_dir_owner(target, "export", force=force)
    db = ResultsDB(db_path, read_only=True)
    try:
        runs = [tracked_run(row) for row in db.rows()]
    finally:
        db.close()
    if not runs:
        raise InputError(f"{db_path} holds no finished runs; run rmtllmf reproduce first")
    mark_output_dir(target, "export")
    if to == "tensorboard":
        written, skipped = export_tensorboard(runs, folder, target, progress=progress)
        hint = f"view with: tensorboard --logdir {target}"
    else:
        name = experiment or folder.resolve().name or "rmtllmf"
        written, skipped = export_mlflow(runs, folder, target, name, progress=progress)
        hint = (
            f"view with: MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri "
            f"{target.resolve().as_uri()} (experiment {name!r})"
        )
    return Exported(written=written, skipped=skipped, out=target, hint=hint)
