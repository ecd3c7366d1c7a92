"""The paper's figures from the report tables, as PNG and PDF (matplotlib, Agg backend).

* Fig. 2: normalized accuracy vs number of tasks per link; one line per scenario ×
  {unprotected, R-MTLLMF} plus the clean merge and the floors (base model alone, chance); the
  band spans the subsets.
* Figs. 3-4: received-vector cosine heatmaps, ideal vs worst case (undefended reception).
* Fig. 5: the ablation (none / freeze / realign / R-MTLLMF) per link and scenario, and
  normalized accuracy vs few-shot samples per class ``k``, with the floors as lines.
* Hypothesis test: rejection rate of H0 vs ``Σ μ_q``, measured and as eq. 12 predicts it.
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

from rmtllmf.metrics import predicted_rejection_rate

DEFENSE_ORDER = ("none", "freeze", "realign", "r-mtllmf")
FLOOR_STYLE = {"clean": ("k", "--"), "base": ("0.45", "-."), "chance": ("0.65", ":")}
"""Colour and line style of the reference lines: the clean merge and the floors."""


def save(fig: Figure, out: Path, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf under ``out``; return both paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, bbox_inches="tight", dpi=150)
    plt.close(fig)
    return paths


def fig2(series: Mapping[str, Mapping[str, Sequence[tuple[int, float, float, float]]]]) -> Figure:
    """Normalized accuracy vs task count, one panel per link."""
    links = list(series)
    fig, axes = plt.subplots(1, len(links), figsize=(4.2 * len(links), 3.6), squeeze=False)
    for ax, link in zip(axes[0], links, strict=True):
        scenarios = list(dict.fromkeys(lab.split(",")[0] for lab in series[link] if "," in lab))
        colours = {s: f"C{i}" for i, s in enumerate(scenarios)}
        for label, pts in series[link].items():
            if not pts:
                continue
            n, mean, lo, hi = (np.array(v) for v in zip(*pts, strict=True))
            if label in FLOOR_STYLE:
                colour, style = FLOOR_STYLE[label]
            else:
                colour = colours[label.split(",")[0]]
                style = "-" if "R-MTLLMF" in label else ":"
            ax.plot(n, mean, style, color=colour, marker="o", ms=3, label=label)
            ax.fill_between(n, lo, hi, color=colour, alpha=0.12)
        ax.set_title(f"link: {link}")
        ax.set_xlabel("number of tasks N")
        ax.set_ylim(0, 1.1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("normalized accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower left")
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
