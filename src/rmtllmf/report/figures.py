"""The paper's figures from the report tables, as PNG and PDF (matplotlib, Agg backend).

* Fig. 2: normalized accuracy vs number of tasks per link; one line per scenario ×
  {unprotected, R-MTLLMF, each extra defense run on the link} plus the clean merge and the
  floors (base model alone, chance); the band spans the subsets.
* Figs. 3-4: received-vector cosine heatmaps, ideal vs worst case (undefended reception).
* Fig. 5: the ablation (none / freeze / realign / R-MTLLMF) per link and scenario, and
  normalized accuracy vs few-shot samples per class ``k``, with the floors as lines.
* Hypothesis test: rejection rate of H0 vs ``Σ μ_q``, measured and as eq. 12 predicts it.
* Rank spectra: singular values of clean and received weight matrices in units of each user's
  Gavish-Donoho threshold, with the Marchenko-Pastur edge, per link × scenario.
* SNR axis: normalized accuracy against the per-entry SNR (and, on a second axis, the SNR
  relative to the weights), one line per defense with its 95% band over seeds, the clean merge
  and the floors as lines and the paper's operating points marked; beside it, the accuracy
  against the jammer's power where the sweep ran that axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rmtllmf._io import atomic_output
from rmtllmf.defense.blind import gd_threshold, mp_edge
from rmtllmf.metrics import predicted_rejection_rate
from rmtllmf.report.axis_report import AxisReport
from rmtllmf.report.seeds import Interval
from rmtllmf.study.snr_axis import PAPER_POINTS
from rmtllmf.study.spectra import RankSpectra

DEFENSE_ORDER = ("none", "freeze", "realign", "r-mtllmf")
FLOOR_STYLE = {"clean": ("k", "--"), "base": ("0.45", "-."), "chance": ("0.65", ":")}
"""Colour and line style of the reference lines: the clean merge and the floors."""
LineStyle = str | tuple[int, tuple[int, ...]]
"""A matplotlib line style: a name or an ``(offset, dash pattern)``."""
PAPER_LINES: dict[str, tuple[LineStyle, str]] = {"unprotected": (":", "o"), "R-MTLLMF": ("-", "o")}
"""Line style and marker of Fig. 2's paper lines; extra defenses take :data:`EXTRA_LINES`."""
EXTRA_LINES: tuple[tuple[LineStyle, str], ...] = (
    ("--", "s"),
    ("-.", "^"),
    ((0, (5, 1, 1, 1, 1, 1)), "D"),
    ((0, (1, 1)), "v"),
    ((0, (7, 2)), "P"),
    ((0, (3, 1, 1, 1)), "X"),
)


NAMES = (
    "fig2_accuracy_vs_tasks",
    "fig3_cosine_ideal",
    "fig4_cosine_worst",
    "fig5_ablation",
    "hypothesis_rejection",
    "rank_spectra",
    "snr_axis",
)
"""Every figure a report may draw (each as ``.png`` and ``.pdf``)."""
FORMATS = (".png", ".pdf")


def save(fig: Figure, out: Path, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf under ``out``, each whole or not at all; return both
    paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}{suffix}" for suffix in FORMATS]
    try:
        for p in paths:
            with atomic_output(p, suffix=p.suffix) as tmp:
                fig.savefig(tmp, bbox_inches="tight", dpi=150)
    finally:
        plt.close(fig)
    return paths


def fig2(series: Mapping[str, Mapping[str, Sequence[tuple[int, float, float, float]]]]) -> Figure:
    """Normalized accuracy vs task count, one panel per link."""
    links = list(series)
    fig, axes = plt.subplots(
        1, len(links), figsize=(4.2 * len(links), 3.6), squeeze=False, layout="constrained"
    )
    defenses = [lab.split(", ", 1)[1] for lines in series.values() for lab in lines if ", " in lab]
    extras = [d for d in dict.fromkeys(defenses) if d not in PAPER_LINES]
    styles = {**PAPER_LINES, **dict(zip(extras, EXTRA_LINES * len(extras), strict=False))}
    legend: dict[str, Any] = {}
    for ax, link in zip(axes[0], links, strict=True):
        scenarios = list(dict.fromkeys(lab.split(",")[0] for lab in series[link] if "," in lab))
        colours = {s: f"C{i}" for i, s in enumerate(scenarios)}
        for label, pts in series[link].items():
            if not pts:
                continue
            n, mean, lo, hi = (np.array(v) for v in zip(*pts, strict=True))
            style: LineStyle
            if label in FLOOR_STYLE:
                colour, style = FLOOR_STYLE[label]
                marker = "o"
            else:
                scenario, defense = label.split(", ", 1)
                colour = colours[scenario]
                style, marker = styles[defense]
            (line,) = ax.plot(n, mean, ls=style, color=colour, marker=marker, ms=3, label=label)
            ax.fill_between(n, lo, hi, color=colour, alpha=0.12)
            legend.setdefault(label, line)
        ax.set_title(f"link: {link}")
        ax.set_xlabel("number of tasks N")
        ax.set_ylim(0, 1.1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("normalized accuracy")
    if legend:  # one legend for every panel's lines (extra defenses may run on one link only)
        fig.legend(
            list(legend.values()),
            list(legend),
            fontsize=7,
            loc="outside lower center",
            ncol=min(len(legend), 6),
        )
    fig.suptitle("Fig. 2: multi-task fusion over the uplink")
    return fig


def heatmap(matrix: np.ndarray, tasks: Sequence[str], title: str) -> Figure:
    """Cosine-similarity heatmap with the values printed (Figs. 3-4)."""
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(tasks)), tasks, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            colour = "k" if matrix[i, j] > 0.6 else "w"
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6, color=colour)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    return fig


def fig5(
    by_link: Mapping[str, Mapping[str, Mapping[str, float]]],
    kshot: Mapping[str, Sequence[tuple[int, float]]],
    clean: float,
    floors: Mapping[str, float] | None = None,
) -> Figure:
    """Ablation bars (left) and normalized accuracy vs k (right), with the clean merge and the
    ``floors`` (``base``, ``base+realign``, ``chance``) as horizontal lines."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
    groups = [(link, s) for link, d in by_link.items() for s in d]
    present = {d for cells in by_link.values() for cell in cells.values() for d in cell}
    extra = sorted(present - set(DEFENSE_ORDER) - {"base", "base+realign"})
    bars = [*DEFENSE_ORDER, *extra]
    width = 0.8 / len(bars)
    for i, defense in enumerate(bars):
        vals = [by_link[link][s].get(defense, np.nan) for link, s in groups]
        offset = (i - (len(bars) - 1) / 2) * width
        ax.bar(np.arange(len(groups)) + offset, vals, width, label=defense)
    ax.axhline(clean, color="k", ls="--", lw=1, label="clean")
    floor_lines = {k: v for k, v in (floors or {}).items() if v == v}
    for (name, value), style in zip(floor_lines.items(), ("-.", ":", (0, (1, 3))), strict=False):
        for axis in (ax, bx):
            axis.axhline(value, color="0.45", ls=style, lw=1, label=name)
    ax.set_xticks(
        range(len(groups)),
        [f"{link}: {s}" for link, s in groups],
        fontsize=7,
        rotation=40,
        ha="right",
    )
    ax.set_ylabel("normalized accuracy")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=7, ncol=5, loc="upper right")
    ax.set_title("ablation at the largest N")
    for label, pts in kshot.items():
        if pts:
            k, v = zip(*pts, strict=True)
            bx.plot(k, v, marker="o", label=label)
    bx.axhline(clean, color="k", ls="--", lw=1, label="clean")
    bx.set_xscale("log")
    bx.set_xlabel("samples per class k")
    bx.set_ylim(0, 1.1)
    bx.legend(fontsize=7)
    bx.set_title("R-MTLLMF vs k")
    fig.suptitle("Fig. 5: ablation and few-shot budget")
    return fig


def rejection(points: Sequence[Mapping[str, Any]], *, beta: float = 0.05) -> Figure:
    """Eq. 12: rejection rate of H0 vs ``Σ μ_q``, measured (robust and paper statistics, markers)
    and predicted to first order for one logit (a line per ``Σμ_ref``,
    :func:`~rmtllmf.metrics.predicted_rejection_rate`); ``beta`` is the test's significance
    level (the sweep's ``analysis.beta``)."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for form, marker in (("reject_robust", "o"), ("reject_paper", "x")):
        xs = [p["sum_mu"] for p in points if p["sum_mu"] > 0]
        ys = [p[form] for p in points if p["sum_mu"] > 0]
        ax.scatter(xs, ys, marker=marker, label=form.replace("reject_", "statistic: "))
    refs = sorted({float(p["sum_mu_ref"]) for p in points})
    if refs:
        span = [float(p["sum_mu"]) for p in points if p["sum_mu"] > 0] + refs
        grid = np.geomspace(min(span) / 3, max(span) * 3, 200)
        for i, ref in enumerate(refs):
            label = f"predicted, eq. 12 (β = {beta:g})" if i == 0 else "_nolegend_"
            rate = predicted_rejection_rate(grid, ref, beta=beta)
            ax.plot(grid, rate, color="C2", lw=1.2, label=label)
    if points:
        ax.axvline(points[0]["sum_mu_ref"], color="k", ls="--", lw=1, label="Σμ_ref (sets T)")
    ax.set_xscale("log")
    ax.set_xlabel("Σ_q μ_q (measured per-entry error)")
    ax.set_ylabel("rejection rate of H0")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    ax.set_title("Hypothesis test (eqs. 9-12)")
    return fig


def _short(name: str) -> str:
    """A parameter name short enough for a legend (``encoder.layers.0.mlp.fc1.weight`` ->
    ``L0 fc1``)."""
    short = (
        name.removesuffix(".weight").replace("encoder.layers.", "L").replace("encoder.layer.", "L")
    )
    parts = short.split(".")
    return f"{parts[0]} {parts[-1]}" if len(parts) > 2 else short


def rank_spectra(spectra: RankSpectra) -> Figure:
    """Singular values ``s_i`` of the measured weight matrices, clean (dashed) and received
    (solid), each in units of its user's Gavish-Donoho threshold ``lambda*(beta)
    sqrt(max(m, n)) sigma_q`` (the median over users at each index ``i``): what rises above 1
    is what the svd defense keeps. One panel per link × scenario, titled with the count of
    received singular values above the threshold; dotted: the Marchenko-Pastur edge
    ``sigma (sqrt(m) + sqrt(n))`` in the same units, one line per matrix shape."""
    links = list(dict.fromkeys(r.link for r in spectra.receptions))
    scenarios = list(dict.fromkeys(r.scenario for r in spectra.receptions))
    fig, axes = plt.subplots(
        len(links),
        len(scenarios),
        figsize=(4.0 * len(scenarios), 3.0 * len(links)),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    counts = spectra.counts()
    handles: dict[str, Any] = {}
    for r, rec in enumerate(spectra.receptions):
        ax = axes[links.index(rec.link)][scenarios.index(rec.scenario)]
        for t, tensor in enumerate(spectra.tensors):
            thr = np.array([spectra.threshold(r, t, q) for q in range(len(rec.users))])
            if not np.all(thr > 0):
                continue  # no noise, no threshold
            got = np.median(np.array(rec.received[t]) / thr[:, None], axis=0)
            clean = np.median(np.array([tensor.clean[u] for u in rec.users]) / thr[:, None], axis=0)
            index = np.arange(1, got.size + 1)
            colour = f"C{t % 10}"
            (line,) = ax.plot(index, got, color=colour, lw=1.1)
            ax.plot(index, clean, color=colour, lw=0.9, ls="--")
            handles.setdefault(_short(tensor.name), line)
        for m, n in dict.fromkeys(t.shape for t in spectra.tensors):
            ratio = mp_edge((m, n), 1.0) / gd_threshold((m, n), 1.0)
            ax.axhline(ratio, color="0.5", ls=":", lw=1)
        ax.axhline(1.0, color="k", lw=1)
        c = counts[r]
        ax.set_title(f"{rec.link}, {rec.scenario}: {c.above} of {c.values} above", fontsize=9)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both", lw=0.4)
    for ax in axes[-1]:
        ax.set_xlabel("index i of the singular value")
    for row in axes:
        row[0].set_ylabel("s_i / Gavish-Donoho threshold")
    extra = {
        "received": Line2D([], [], color="0.3", lw=1.1),
        "clean": Line2D([], [], color="0.3", lw=0.9, ls="--"),
        "threshold (svd keeps above)": Line2D([], [], color="k", lw=1),
        "Marchenko-Pastur edge": Line2D([], [], color="0.5", ls=":", lw=1),
    }
    fig.legend(
        [*handles.values(), *extra.values()],
        [*handles, *extra],
        fontsize=7,
        loc="outside lower center",
        ncol=6,
    )
    fig.suptitle(f"Rank spectra of the task vectors (N = {len(spectra.tasks)}; median over users)")
    return fig


def _banded(
    ax: Any,
    curves: Mapping[str, Sequence[tuple[float, Interval]]],
    floors: Mapping[str, Interval],
    *,
    floor_labels: bool,
    legend: str = "lower right",
) -> None:
    """One line per curve with its 95% band, and the floors as horizontal lines."""
    for name, points in curves.items():
        x = [p[0] for p in points]
        line = ax.plot(x, [p[1].mean for p in points], marker=".", label=name)[0]
        lo, hi = [p[1].lo for p in points], [p[1].hi for p in points]
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.18, lw=0)
    for name, value in floors.items():
        color, style = FLOOR_STYLE.get(name, ("0.3", (0, (1, 3))))
        ax.axhline(value.mean, color=color, ls=style, lw=1, label=name if floor_labels else None)
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=6, ncol=2, loc=legend)


def snr_axis(axis: AxisReport) -> Figure:
    """Normalized accuracy against the per-entry SNR with 95% bands over seeds (left) and,
    where the sweep ran it, against the jammer-to-noise ratio (right)."""
    panels = 1 + bool(axis.snr and axis.jammer)
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    ax.set_ylabel("normalized accuracy")
    if axis.snr:
        _banded(ax, axis.snr, axis.floors, floor_labels=True)
        for height, (scenario, db) in zip((1.07, 0.45, 1.07), PAPER_POINTS.items(), strict=True):
            ax.axvline(db, color="0.6", lw=0.8, ls=(0, (2, 2)))
            ax.annotate(
                f"paper {scenario}", (db, height), fontsize=6, rotation=90, ha="right", va="top"
            )
        ax.set_xlabel("per-entry SNR relative to the task vector (dB)")
        if axis.weights_shift_db is not None:
            shift = axis.weights_shift_db
            top = ax.secondary_xaxis("top", functions=(lambda v: v + shift, lambda v: v - shift))
            top.set_xlabel("SNR relative to the weights (dB)", fontsize=8)
    if axis.jammer:
        bx = axes[0][-1]
        scenario, by_defense = next(iter(axis.jammer.items()))
        curves = {d: [(j, i) for j, i, _ in points] for d, points in by_defense.items()}
        _banded(bx, curves, axis.floors, floor_labels=not axis.snr, legend="center right")
        bx.set_xlabel(f"jammer-to-noise ratio (dB), {scenario} jammer, snr link")
    fig.suptitle("normalized accuracy against the noise's strength (bands: 95% over seeds)", y=1.06)
    return fig
