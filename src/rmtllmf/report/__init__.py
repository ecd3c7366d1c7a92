"""Report of a sweep: figures (PNG + PDF), ``report.md``, ``summary.json`` and ``runs.csv``.

:func:`write_report` reads the sweep's database and writes, under ``out``:

* ``fig2_accuracy_vs_tasks``, ``fig3_cosine_ideal``, ``fig4_cosine_worst``,
  ``fig5_ablation``, ``hypothesis_rejection`` and, when the sweep measured them, the
  ``rank_spectra`` of the clean and received task vectors and the ``snr_axis``
  (:mod:`rmtllmf.report.axis_report`) (``.png`` and ``.pdf``);
* ``report.md`` with the tables behind each figure, the paper's orderings per link, the
  channel per scenario, MMSE-SIC against AirComp where the sweep ran an AirComp link
  (:mod:`rmtllmf.report.receivers`), WDE and hypothesis-test results and the resolved config;
* ``summary.json`` (``clean``, ``clean_realign``, ``by_link`` at the largest task count, the
  orderings, the rank spectra's counts, ``receivers``, code version, seeds and config) and
  ``runs.csv`` (one row per run and task).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmtllmf._io import write_text_atomic
from rmtllmf.errors import InputError
from rmtllmf.report import figures, markdown, seeds, tables
from rmtllmf.report.axis_report import AXIS_ROLES, AxisReport, axis_report
from rmtllmf.report.receivers import ReceiverRow, receiver_table
from rmtllmf.study.plan import SweepConfig, plan_runs
from rmtllmf.study.snr_axis import SIGNAL_META
from rmtllmf.study.spectra import SPECTRA_META, RankSpectra, SpectraCount
from rmtllmf.study.store import ResultsDB, RunRecord, code_version, export_csv, run_key
from rmtllmf.study.sweep import stored_lambdas

Cosines = dict[str, tuple[float, float, float]]
"""Reception name -> (mean, min, max) off-diagonal received-vector cosine."""


def _cosines(rows: Sequence[RunRecord], links: Sequence[str], scenarios: Sequence[str]) -> Cosines:
    """Off-diagonal cosine of the clean vectors and of every link × scenario's received ones."""
    cosines = {"clean": tables.offdiag(tables.mean_cosine(rows, link="noiseless"))}
    for link in links:
        for scenario in scenarios:
            cosines[f"{scenario}, {link}"] = tables.offdiag(
                tables.mean_cosine(rows, link=link, scenario=scenario)
            )
    return cosines


def _spectra(db: ResultsDB) -> RankSpectra | None:
    """The rank spectra the sweep stored (:mod:`rmtllmf.study.spectra`), or ``None``."""
    stored = db.meta(SPECTRA_META)
    return None if stored is None else RankSpectra.from_json(json.loads(stored))


def _figures(
    rows: Sequence[RunRecord],
    summ: tables.Summary,
    fig2: dict[str, dict[str, tables.Series]],
    kshot: dict[str, list[tuple[int, float]]],
    out: Path,
    spectra: RankSpectra | None = None,
    axis: AxisReport | None = None,
) -> list[Path]:
    """Save every figure under ``out``; returns the files written (PNG and PDF of each)."""
    links = list(summ.by_link)
    scenarios = list(dict.fromkeys(s for d in summ.by_link.values() for s in d))
    files = figures.save(figures.fig2(fig2), out, "fig2_accuracy_vs_tasks") if fig2 else []
    if links and scenarios:
        tasks = next(list(r.config.tasks) for r in rows if len(r.config.tasks) == summ.n_tasks)
        ideal = next((s for s in scenarios if s.endswith("ideal")), scenarios[0])
        worst = next((s for s in scenarios if s != ideal), ideal)
        for name, scenario in (("fig3_cosine_ideal", ideal), ("fig4_cosine_worst", worst)):
            m = tables.mean_cosine(rows, link=links[0], scenario=scenario)
            if m.size:
                title = f"received task vectors, {scenario}, {links[0]} link"
                files += figures.save(figures.heatmap(m, tasks, title), out, name)
        floors = {"base": summ.base, "base+realign": summ.base_realign, "chance": summ.chance}
        files += figures.save(
            figures.fig5(summ.by_link, kshot, summ.clean, floors), out, "fig5_ablation"
        )
    analysed = [
        (r.result.analysis, r.config.analysis)
        for r in rows
        if r.result.analysis is not None and r.config.analysis is not None
    ]
    if analysed:
        points = [result.to_json() for result, _ in analysed]
        beta = analysed[0][1].beta  # the sweep's significance level
        files += figures.save(figures.rejection(points, beta=beta), out, "hypothesis_rejection")
    if spectra is not None and spectra.receptions:
        files += figures.save(figures.rank_spectra(spectra), out, "rank_spectra")
    if axis is not None:
        files += figures.save(figures.snr_axis(axis), out, "snr_axis")
    for name in figures.NAMES:  # a figure an earlier report drew but this one cannot
        for suffix in figures.FORMATS:
            if (stale := out / f"{name}{suffix}") not in files:
                stale.unlink(missing_ok=True)
    return files


@dataclass(frozen=True)
class PlannedRows:
    """The database's runs of the sweep's current plan, in plan order, and how they cover it."""

    rows: list[RunRecord]
    planned: int | None
    """Runs in the plan (``None`` when it cannot be rebuilt: then ``rows`` is every run)."""
    outside: int
    """Runs in the database that the plan does not hold (other settings): left out."""


def planned_rows(rows: list[RunRecord], db: ResultsDB) -> PlannedRows:
    """The runs of the sweep config stored in ``db`` (its plan, :func:`~rmtllmf.study.plan.
    plan_runs`, with the ``λ_N`` chosen for exactly these settings), in plan order: the report
    never depends on the order in which the executor's workers finished, and never mixes in
    runs of other settings that an earlier config left in the database."""
    raw, pool = db.meta("sweep_config"), db.meta("pool_id")
    if raw is None or pool is None:
        return PlannedRows(sorted(rows, key=lambda r: r.config.model_dump_json()), None, 0)
    try:
        cfg = SweepConfig.model_validate_json(raw)
        plan = plan_runs(cfg, stored_lambdas(pool, cfg, db))
    except (InputError, KeyError, ValueError):
        return PlannedRows(sorted(rows, key=lambda r: r.config.model_dump_json()), None, 0)
    rank = {run_key(pool, r.config): i for i, r in enumerate(plan)}
    kept = sorted((r for r in rows if r.key in rank), key=lambda r: rank[r.key])
    return PlannedRows(kept, len(plan), len(rows) - len(kept))


def _summary_json(
    summ: tables.Summary,
    order: list[tables.Ordering],
    cosines: dict[str, tuple[float, float, float]],
    analysis: list[tables.AnalysisRow],
    counts: list[SpectraCount],
    meta: markdown.ReportMeta,
    config: dict[str, Any],
    files: list[Path],
    unc: seeds.Uncertainty,
    axis: AxisReport | None,
    receivers: Sequence[ReceiverRow] = (),
) -> dict[str, Any]:
    """``summary.json``'s content: the headline summary, then everything the report shows."""
    complete = meta.planned is not None and meta.runs >= meta.planned
    return {
        **summ.to_json(),
        "orderings": [o.to_json() for o in order],
        "cosine_offdiag": {
            k: dict(zip(("mean", "min", "max"), v, strict=True)) for k, v in cosines.items()
        },
        "analysis": [a.to_json() for a in analysis],
        "rank_spectra": [c.to_json() for c in counts],
        "code_version": meta.code_version,
        "pool_id": meta.pool_id,
        "seeds": meta.seeds,
        "config": config,
        "figures": [p.name for p in files],
        "coverage": {
            "runs": meta.runs,
            "planned": meta.planned,
            "complete": complete,
            "other_settings": meta.outside,
            "note": markdown.coverage_note(meta),
        },
        "uncertainty": unc.to_json(),
        "snr_axis": None if axis is None else axis.to_json(),
        "receivers": [r.to_json() for r in receivers],
    }


def write_report(db: ResultsDB, out: str | Path) -> dict[str, Any]:
    """Write every artefact of the report under ``out``; returns ``summary.json``'s content."""
    planned = planned_rows(list(db.rows()), db)
    every = planned.rows
    rows = [r for r in every if r.role not in AXIS_ROLES]
    if not rows:
        other = f" of its study ({planned.outside} of other settings)" if planned.outside else ""
        raise InputError(
            f"the results database {db.path} holds no finished runs{other}; run the sweep"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads(db.meta("sweep_config") or "{}")
    summ = tables.summary(rows)
    order = tables.orderings(summ)
    fig2 = tables.fig2_series(rows)
    kshot = tables.kshot_series(rows)
    scenarios = list(dict.fromkeys(s for d in summ.by_link.values() for s in d))
    cosines = _cosines(rows, list(summ.by_link), scenarios)
    spectra = _spectra(db)
    signal = db.meta(SIGNAL_META)
    axis = axis_report(every, None if signal is None else json.loads(signal))
    files = _figures(rows, summ, fig2, kshot, out, spectra, axis)
    analysis = tables.analysis_table(rows)
    meta = markdown.ReportMeta(
        runs=len(every),
        code_version=db.code_version or code_version(),
        pool_id=db.meta("pool_id"),
        seeds=config.get("seeds"),
        headline_seeds=config.get("headline_seeds"),
        config=json.dumps(config, indent=2),
        planned=planned.planned,
        outside=planned.outside,
    )
    counts = spectra.counts() if spectra is not None else []
    unc = seeds.uncertainty(rows, summ.n_tasks)
    receivers = receiver_table(rows)
    text = markdown.render(
        summ,
        order,
        tables.channel_table(rows),
        analysis,
        cosines,
        fig2,
        kshot,
        meta,
        spectra=spectra,
        uncertainty=unc,
        axis=axis,
        receivers=receivers,
    )
    write_text_atomic(out / "report.md", text)
    full = _summary_json(
        summ, order, cosines, analysis, counts, meta, config, files, unc, axis, receivers
    )
    write_text_atomic(out / "summary.json", json.dumps(full, indent=2))
    export_csv(every, out / "runs.csv")
    return full


__all__ = ["write_report"]
