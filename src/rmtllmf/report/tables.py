"""From the sweep's rows to the numbers behind every figure (no plotting here).

All accuracies are *normalized* accuracies (merged / the task's own fine-tuned accuracy,
averaged over the subset's tasks), averaged over subsets and seeds unless stated otherwise.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypedDict, Unpack

import numpy as np

from rmtllmf.defense import CHANNEL_FREE, DEFENSES, PAPER
from rmtllmf.metrics import recovered_fraction
from rmtllmf.report.paper import PaperReference, paper_reference
from rmtllmf.study.store import AnalysisRecord, RunRecord

CLEAR_MARGIN = 0.1
"""What "R-MTLLMF worst ≫ unprotected worst" asks, in normalized accuracy."""

ByLink = dict[str, dict[str, dict[str, float]]]
"""``link -> scenario -> defense -> value`` (the floors ``base``, ``base+realign`` in every
cell beside the defenses)."""


def _mean(values: Iterable[float]) -> float:
    """The mean, NaN for no values."""
    vals = list(values)
    return float(np.mean(vals)) if vals else float("nan")


def largest_n(rows: Sequence[RunRecord]) -> int:
    """The largest task count in the results."""
    return max(len(r.config.tasks) for r in rows)


class Where(TypedDict, total=False):
    """Which runs to take: ``n`` (task count), ``k`` (realign samples per class) and config
    fields; an absent key matches anything."""

    n: int
    k: int
    link: str
    scenario: str
    defense: str


def _select(rows: Sequence[RunRecord], **where: Unpack[Where]) -> list[RunRecord]:
    """The rows whose config matches every given field of :class:`Where`."""
    return [
        r
        for r in rows
        if ("n" not in where or len(r.config.tasks) == where["n"])
        and ("k" not in where or r.config.realign.k_per_class == where["k"])
        and ("link" not in where or r.config.link == where["link"])
        and ("scenario" not in where or r.config.scenario == where["scenario"])
        and ("defense" not in where or r.config.defense == where["defense"])
    ]


def normalized(rows: Sequence[RunRecord], **where: Unpack[Where]) -> float:
    """Mean normalized accuracy of the rows matching ``where`` (:class:`Where`)."""
    return _mean(r.result.normalized for r in _select(rows, **where))


@dataclass(frozen=True)
class Recovered:
    """The recovered fractions (:func:`recovered_fraction`) of the summary's numbers."""

    clean_realign: float
    base: float
    base_realign: float
    by_link: ByLink

    def to_json(self) -> dict[str, Any]:
        """As in ``summary.json``'s ``recovered``."""
        return asdict(self)


@dataclass(frozen=True)
class Summary:
    """The head of ``summary.json`` (see :func:`summary`); NaN where a run kind is missing."""

    n_tasks: int
    clean: float
    clean_realign: float
    base: float
    base_realign: float
    chance: float
    by_link: ByLink
    recovered: Recovered
    paper: tuple[PaperReference, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """``summary.json``'s first keys, in this order."""
        return {
            "n_tasks": self.n_tasks,
            "clean": self.clean,
            "clean_realign": self.clean_realign,
            "base": self.base,
            "base_realign": self.base_realign,
            "chance": self.chance,
            "by_link": self.by_link,
            "recovered": self.recovered.to_json(),
            "paper": [p.to_json() for p in self.paper],
        }


def _by_link(rows: Sequence[RunRecord], floors: dict[str, float]) -> ByLink:
    """The ablation's mean normalized accuracy per link, scenario and defense, with the
    ``floors`` in every cell."""
    ablation = [r for r in rows if r.role == "ablation"]
    by_link: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in ablation:
        c = r.config
        by_link[c.link][c.scenario][c.defense] = normalized(
            ablation, link=c.link, scenario=c.scenario, defense=c.defense
        )
    for cells in by_link.values():
        for cell in cells.values():
            cell.update(floors)
    return {link: dict(v) for link, v in by_link.items()}


def summary(rows: Sequence[RunRecord]) -> Summary:
    """``summary.json``: clean, clean + realign, the floors (``base``, ``base+realign``,
    ``chance``) and link × scenario × defense at the largest N (default realign ``k``), each
    beside its recovered fraction (:func:`recovered_fraction`) under ``recovered``, and the
    paper's own numbers (:func:`paper_reference`)."""
    n = largest_n(rows)
    clean = normalized(rows, n=n, link="noiseless", defense="none")
    floors = {
        "base": normalized(rows, n=n, link="noiseless", defense="base"),
        "base+realign": normalized(rows, n=n, link="noiseless", defense="base+realign"),
    }
    floors = {k: v for k, v in floors.items() if not np.isnan(v)}
    chance = _mean(r.result.chance for r in rows if len(r.config.tasks) == n)
    by_link = _by_link(rows, floors)
    clean_realign = normalized(rows, n=n, link="noiseless", defense="realign")
    base = floors.get("base", float("nan"))
    base_realign = floors.get("base+realign", float("nan"))

    def rec(value: float) -> float:
        return recovered_fraction(value, chance, clean)

    return Summary(
        n_tasks=n,
        clean=clean,
        clean_realign=clean_realign,
        base=base,
        base_realign=base_realign,
        chance=chance,
        by_link=by_link,
        recovered=Recovered(
            clean_realign=rec(clean_realign),
            base=rec(base),
            base_realign=rec(base_realign),
            by_link={
                link: {s: {d: rec(v) for d, v in cell.items()} for s, cell in cells.items()}
                for link, cells in by_link.items()
            },
        ),
        paper=tuple(paper_reference()),
    )


Series = list[tuple[int, float, float, float]]
"""``(N, mean, min, max)`` points of one line of Fig. 2."""


def _spread(counts: Sequence[int], values_at: Callable[[int], list[float]]) -> Series:
    """``(N, mean, min, max)`` of ``values_at(N)`` for every ``N`` with values."""
    pts = []
    for n in counts:
        vals = values_at(n)
        if vals:
            pts.append((n, float(np.mean(vals)), float(np.min(vals)), float(np.max(vals))))
    return pts


def fig2_series(rows: Sequence[RunRecord]) -> dict[str, dict[str, Series]]:
    """Per link: line name -> ``(N, mean, min, max)`` over subsets (Fig. 2): per scenario
    ``unprotected``, ``R-MTLLMF`` and each defense beyond the paper's that ran on the link
    (named as in the registry), with the clean merge and the floors ``base`` (the BS discards
    what it received) and ``chance``."""
    out: dict[str, dict[str, Series]] = {}
    ran = {r.config.defense for r in rows}
    extras = [d for d in DEFENSES if d in ran and d not in (*PAPER, *CHANNEL_FREE)]
    counts = sorted({len(r.config.tasks) for r in rows})
    links = sorted({r.config.link for r in rows} - {"noiseless"})
    scenarios = list(dict.fromkeys(r.config.scenario for r in rows if r.config.link != "noiseless"))

    def series(link: str, defense: str, scenario: str | None = None) -> Series:
        where = Where(link=link, defense=defense)
        if scenario is not None:
            where["scenario"] = scenario
        return _spread(
            counts,
            lambda n: [
                r.result.normalized
                for r in _select(rows, **(where | Where(n=n)))
                if r.role in ("clean", "fig2", "ablation")
            ],
        )

    def chance_series() -> Series:
        return _spread(
            counts,
            lambda n: [
                r.result.chance
                for r in _select(rows, n=n, link="noiseless", defense="none")
                if not math.isnan(r.result.chance)  # older rows did not record it
            ],
        )

    for link in links:
        lines = {
            "clean": series("noiseless", "none"),
            "base": series("noiseless", "base"),
            "chance": chance_series(),
        }
        for scenario in scenarios:
            for defense, label in (("none", "unprotected"), ("r-mtllmf", "R-MTLLMF")):
                lines[f"{scenario}, {label}"] = series(link, defense, scenario)
            for defense in extras:
                pts = series(link, defense, scenario)
                if pts:  # an extra defense draws a line only where it ran
                    lines[f"{scenario}, {defense}"] = pts
        out[link] = lines
    return out


def kshot_series(rows: Sequence[RunRecord]) -> dict[str, list[tuple[int, float]]]:
    """``scenario (link)`` -> ``(k, normalized)`` for R-MTLLMF at the largest N (Fig. 5)."""
    n = largest_n(rows)
    pool = [r for r in rows if r.role in ("kshot", "ablation") and r.config.defense == "r-mtllmf"]
    kshot = [r for r in rows if r.role == "kshot"]
    out: dict[str, list[tuple[int, float]]] = {}
    for scenario, link in dict.fromkeys((r.config.scenario, r.config.link) for r in kshot):
        ks = sorted(
            {r.config.realign.k_per_class for r in _select(pool, n=n, scenario=scenario, link=link)}
        )
        out[f"{scenario} ({link})"] = [
            (k, normalized(pool, n=n, scenario=scenario, link=link, k=k)) for k in ks
        ]
    return out


def mean_cosine(
    rows: Sequence[RunRecord], *, link: str | None = None, scenario: str | None = None
) -> np.ndarray:
    """Mean received-vector cosine matrix of the undefended runs on ``link`` in ``scenario``
    (``None``: any) at the largest N (the defense acts after reception, so ``none`` runs carry
    every received set)."""
    where = Where(n=largest_n(rows), defense="none")
    if link is not None:
        where["link"] = link
    if scenario is not None:
        where["scenario"] = scenario
    mats = [np.array(r.result.received_cosine) for r in _select(rows, **where)]
    mats = [m for m in mats if m.size and m.shape == mats[0].shape]
    return np.mean(mats, axis=0) if mats else np.zeros((0, 0))


def offdiag(m: np.ndarray) -> tuple[float, float, float]:
    """(mean, min, max) of the off-diagonal entries."""
    if m.shape[0] < 2:
        return (float("nan"),) * 3
    vals = m[~np.eye(m.shape[0], dtype=bool)]
    return float(vals.mean()), float(vals.min()), float(vals.max())


@dataclass(frozen=True)
class ChannelRow:
    """One scenario's channel at the largest N: mean ``μ_q`` per user position, the implied
    SINR in dB and the measured per-entry error of each link."""

    scenario: str
    mu: list[float]
    sinr_db: list[float]
    error_mse: dict[str, float]


def channel_table(rows: Sequence[RunRecord]) -> list[ChannelRow]:
    """Per scenario: mean μ_q per user position and the implied SINR (``1/μ - 1``, eq. 5) at
    the largest N, with the measured per-entry error of each link."""
    n = largest_n(rows)
    out = []
    ablation = [r for r in rows if r.role == "ablation" and r.config.defense == "none"]
    for scenario in dict.fromkeys(r.config.scenario for r in ablation):
        sel = _select(ablation, n=n, scenario=scenario)
        mu = np.mean([r.result.mse for r in sel], axis=0)
        errors: dict[str, float] = {
            link: float(np.mean([np.mean(r.result.error_mse) for r in _select(sel, link=link)]))
            for link in dict.fromkeys(r.config.link for r in sel)
        }
        out.append(
            ChannelRow(
                scenario=scenario,
                mu=mu.tolist(),
                sinr_db=(10 * np.log10(np.maximum(1 / mu - 1, 1e-30))).tolist(),
                error_mse=errors,
            )
        )
    return out


@dataclass(frozen=True)
class AnalysisRow:
    """WDE and hypothesis-test outcome of one scenario × link (mean over the analysed runs)."""

    scenario: str
    link: str
    wde_clean: float
    wde_received: float
    sum_mu: float
    sum_mu_ref: float
    reject_robust: float
    reject_paper: float

    def to_json(self) -> dict[str, Any]:
        """As in ``summary.json``'s ``analysis`` list."""
        return asdict(self)


def analysis_table(rows: Sequence[RunRecord]) -> list[AnalysisRow]:
    """WDE and hypothesis-test outcome per scenario × link (analysed runs, mean over seeds)."""
    groups: dict[tuple[str, str], list[AnalysisRecord]] = defaultdict(list)
    for r in rows:
        if r.result.analysis is not None:
            groups[(r.config.scenario, r.config.link)].append(r.result.analysis)
    return [
        AnalysisRow(
            scenario=s,
            link=link,
            wde_clean=_mean(a.wde_clean for a in items),
            wde_received=_mean(a.wde_received for a in items),
            sum_mu=_mean(a.sum_mu for a in items),
            sum_mu_ref=_mean(a.sum_mu_ref for a in items),
            reject_robust=_mean(a.reject_robust for a in items),
            reject_paper=_mean(a.reject_paper for a in items),
        )
        for (s, link), items in groups.items()
    ]


@dataclass(frozen=True)
class Ordering:
    """The paper's claims on one link (see :func:`orderings`): the numbers compared and
    whether each claim holds."""

    link: str
    clean: float
    rm_ideal: float
    rm_worst: float
    none_worst: float
    clean_ge_rm_ideal: bool
    rm_ideal_gt_rm_worst: bool
    rm_worst_gg_none_worst: bool
    both_beat_each: bool
    rm_worst_gt_base: bool

    def to_json(self) -> dict[str, Any]:
        """As in ``summary.json``'s ``orderings`` list."""
        return asdict(self)


def orderings(summ: Summary) -> list[Ordering]:
    """The paper's claims per link: clean >= R-MTLLMF ideal > R-MTLLMF worst >> unprotected
    worst by at least :data:`CLEAR_MARGIN` (worst = the lower of the non-ideal scenarios), in
    the ablation both modules beat each alone (in every scenario), and R-MTLLMF in the worst
    scenario beats the base model alone (the received vectors helped at all)."""
    out = []
    for link, by_scenario in summ.by_link.items():
        ideal = next((s for s in by_scenario if s.endswith("ideal")), None)
        worst = [s for s in by_scenario if s != ideal]
        if ideal is None or not worst:
            continue
        rm_ideal = by_scenario[ideal].get("r-mtllmf", float("nan"))
        rm_worst = min(by_scenario[s].get("r-mtllmf", float("nan")) for s in worst)
        none_worst = min(by_scenario[s].get("none", float("nan")) for s in worst)
        both_wins = all(
            d.get("r-mtllmf", -1) > max(d.get("freeze", 2), d.get("realign", 2))
            for d in by_scenario.values()
        )
        out.append(
            Ordering(
                link=link,
                clean=summ.clean,
                rm_ideal=rm_ideal,
                rm_worst=rm_worst,
                none_worst=none_worst,
                clean_ge_rm_ideal=bool(summ.clean >= rm_ideal),
                rm_ideal_gt_rm_worst=bool(rm_ideal > rm_worst),
                rm_worst_gg_none_worst=bool(rm_worst >= none_worst + CLEAR_MARGIN),
                both_beat_each=both_wins,
                rm_worst_gt_base=bool(rm_worst > summ.base),
            )
        )
    return out
