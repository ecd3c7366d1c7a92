"""The SNR axis in the report: every defense against the per-entry SNR and the jammer's power,
with 95% intervals over seeds, the bands where R-MTLLMF helps, and the axis's two limits.

From the ``snr-axis`` and ``jammer-axis`` runs (:mod:`rmtllmf.study.snr_axis`), each point's
value per seed is the mean normalized accuracy over the subsets of that seed, and its interval
is :func:`rmtllmf.report.seeds.interval`'s.

* **Bands.** R-MTLLMF *beats* a reference at an SNR when the paired difference over seeds
  (:func:`rmtllmf.report.seeds.compare`) has its 95% interval above the margin: 0.1 against no
  defense (the paper's "clear margin"), 0 against the base model alone and against ``shrink``.
  With one seed the mean stands in for the interval (no claim can be tested then).
* **Limits.** At the highest SNR every defense must equal its own run on the noiseless link;
  at the lowest, no defense must equal chance and ``shrink`` the base model alone. "Equal" is
  the paired difference's interval holding 0, or the difference's mean within
  :data:`LIMIT_TOLERANCE` (a deterministic pair has a zero-width interval).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rmtllmf.channel import PAPER_SIGNAL_POWER
from rmtllmf.report.seeds import Interval, compare, interval, per_seed
from rmtllmf.study.snr_axis import PAPER_POINTS
from rmtllmf.study.store import RunRecord

AXIS_ROLES = ("snr-axis", "jammer-axis")
"""The runs of the axis: the report's other tables leave them out."""
BAND_MARGINS = {"none": 0.1, "base": 0.0, "shrink": 0.0}
"""What R-MTLLMF must beat each reference by (module docs)."""
LIMIT_TOLERANCE = 0.01
"""Normalized accuracy within which a deterministic limit counts as reached."""

SeedValues = dict[int, float]


@dataclass(frozen=True)
class Band:
    """Where R-MTLLMF beats ``versus`` by more than ``margin`` (module docs)."""

    versus: str
    margin: float
    snr_db: list[float]
    """The grid points where it does."""
    grid: list[float]

    @property
    def text(self) -> str:
        """The points as ranges of consecutive grid points, or that there is no such band."""
        if not self.snr_db:
            return "no such band"
        runs: list[list[float]] = []
        for i, x in enumerate(self.grid):
            if x in self.snr_db:
                if runs and self.grid[i - 1] == runs[-1][-1]:
                    runs[-1].append(x)
                else:
                    runs.append([x])
        return ", ".join(
            f"{r[0]:g} dB" if len(r) == 1 else f"{r[0]:g} to {r[-1]:g} dB" for r in runs
        )

    def to_json(self) -> dict[str, Any]:
        """As in ``summary.json``'s ``snr_axis.bands``."""
        return {
            "versus": self.versus,
            "margin": self.margin,
            "snr_db": self.snr_db,
            "text": self.text,
        }


@dataclass(frozen=True)
class Limit:
    """One limit check: ``defense`` at ``snr_db`` against ``reference`` (module docs)."""

    snr_db: float
    defense: str
    reference: str
    difference: Interval
    reached: bool

    def to_json(self) -> dict[str, Any]:
        """As in ``summary.json``'s ``snr_axis.limits``."""
        return {
            "snr_db": self.snr_db,
            "defense": self.defense,
            "reference": self.reference,
            "difference": self.difference.to_json(),
            "reached": self.reached,
        }


@dataclass(frozen=True)
class AxisReport:
    """``summary.json``'s ``snr_axis``."""

    snr: dict[str, list[tuple[float, Interval]]]
    """defense -> (per-entry SNR dB, interval) in increasing SNR."""
    noiseless: dict[str, Interval]
    """defense -> its interval on the noiseless link (the limit of infinite SNR)."""
    jammer: dict[str, dict[str, list[tuple[float, Interval, float]]]]
    """scenario -> defense -> (JNR dB, interval, equivalent per-entry SNR in dB,
    :func:`equivalent_snr_db`)."""
    floors: dict[str, Interval]
    weights_shift_db: float | None
    """per-entry SNR + this = the SNR relative to the weights' power (None: not measured)."""
    bands: list[Band]
    limits: list[Limit]

    def to_json(self) -> dict[str, Any]:
        """As in ``summary.json``."""
        return {
            "snr": {
                d: [{"snr_db": x, **i.to_json()} for x, i in pts] for d, pts in self.snr.items()
            },
            "noiseless": {d: i.to_json() for d, i in self.noiseless.items()},
            "jammer": {
                s: {
                    d: [{"jnr_db": j, **i.to_json(), "equivalent_snr_db": m} for j, i, m in pts]
                    for d, pts in by_d.items()
                }
                for s, by_d in self.jammer.items()
            },
            "floors": {k: v.to_json() for k, v in self.floors.items()},
            "paper_points_db": PAPER_POINTS,
            "weights_shift_db": self.weights_shift_db,
            "bands": [b.to_json() for b in self.bands],
            "limits": [lim.to_json() for lim in self.limits],
        }


def _seed_values(rows: Sequence[RunRecord], key: Any) -> dict[Any, SeedValues]:
    """``key(row)`` -> seed -> mean normalized accuracy over that seed's subsets."""
    groups: dict[Any, list[RunRecord]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    return {k: per_seed(g) for k, g in groups.items()}


def _equal(diff: Interval) -> bool:
    """The limit test (module docs)."""
    inside = diff.n >= 2 and diff.lo <= 0.0 <= diff.hi
    return inside or abs(diff.mean) <= LIMIT_TOLERANCE


def _ahead(diff: Interval, margin: float) -> bool:
    """The band test (module docs)."""
    return (diff.lo if diff.n >= 2 else diff.mean) > margin


def jammer_label(row: RunRecord) -> str:
    """The jammer axis's curve of a run: its scenario, with its link where that is not the
    ``snr`` link (``sum-rate (aircomp)``)."""
    c = row.config
    return c.scenario if c.link == "snr" else f"{c.scenario} ({c.link})"


def equivalent_snr_db(rows: Sequence[RunRecord]) -> float:
    """The per-entry SNR at which the awgn axis puts as much noise into the merge as these
    physical runs did, averaged over runs (dB): the users' noises add, each of power
    ``mu_q E[tau_q^2] / S_ref`` on the snr link, so one SNR for all users gives the same total
    at ``S_ref / mean_q(mu_q)``. (The mean of the users' own SNRs would hide that the noisiest
    users set the merge's noise.) NaN off the ``snr`` link (AirComp's noise is not the users'
    ``mu_q``)."""
    values = [
        10.0 * math.log10(PAPER_SIGNAL_POWER * len(mse) / math.fsum(mse))
        for r in rows
        if r.config.link == "snr" and (mse := r.result.mse) and math.fsum(mse) > 0
    ]
    return math.fsum(values) / len(values) if values else math.nan


def axis_report(
    rows: Sequence[RunRecord], signal: Mapping[str, float] | None = None
) -> AxisReport | None:
    """The axis of the sweep's ``rows`` (all of them: the axis's and the clean runs at the
    largest ``N``), or ``None`` when it ran no axis. ``signal``: the stored
    :func:`~rmtllmf.study.snr_axis.signal_power`."""
    axis = [r for r in rows if r.role in AXIS_ROLES]
    if not axis:
        return None
    n = max(len(r.config.tasks) for r in axis)
    at_n = [r for r in rows if len(r.config.tasks) == n]
    noiseless = _seed_values(
        [r for r in at_n if r.config.link == "noiseless"], lambda r: r.config.defense
    )
    awgn = [r for r in axis if r.role == "snr-axis" and r.config.scenario == "awgn"]
    points = _seed_values(awgn, lambda r: (r.config.defense, r.config.snr_db))
    grid = sorted({float(r.config.snr_db) for r in awgn if r.config.snr_db is not None})
    defenses = list(dict.fromkeys(r.config.defense for r in awgn))
    snr = {
        d: [(x, interval(list(points[(d, x)].values()))) for x in grid if (d, x) in points]
        for d in defenses
    }
    chance = per_seed_chance(at_n)
    floors = {
        "clean": interval(list(noiseless.get("none", {}).values())),
        "base": interval(list(noiseless.get("base", {}).values())),
        "chance": interval(list(chance.values())),
    }
    if "realign" in noiseless:
        floors["clean+realign"] = interval(list(noiseless["realign"].values()))
    jammed = [r for r in axis if r.role == "jammer-axis"]
    jam_values = _seed_values(
        jammed, lambda r: (jammer_label(r), r.config.defense, r.config.channel.jnr_db)
    )
    jammer: dict[str, dict[str, list[tuple[float, Interval, float]]]] = defaultdict(dict)
    order = {d: i for i, d in enumerate(dict.fromkeys(r.config.defense for r in jammed))}
    for scenario, defense, jnr in sorted(
        jam_values, key=lambda k: (k[0], order[k[1]], k[2] if k[2] is not None else 0.0)
    ):
        at = [
            r
            for r in jammed
            if (jammer_label(r), r.config.defense, r.config.channel.jnr_db)
            == (scenario, defense, jnr)
        ]
        point = (float(jnr or 0.0), interval(list(jam_values[(scenario, defense, jnr)].values())))
        jammer[scenario].setdefault(defense, []).append((*point, equivalent_snr_db(at)))
    bands = []
    if "r-mtllmf" in defenses:
        for versus, margin in BAND_MARGINS.items():
            ahead = []
            for x in grid:
                other = noiseless.get("base") if versus == "base" else points.get((versus, x))
                if not other and versus not in defenses:
                    break
                ours = points.get(("r-mtllmf", x), {})
                diff = compare(ours, other or {}, "snr", "awgn", ("r-mtllmf", versus))
                if diff.difference.n and _ahead(diff.difference, margin):
                    ahead.append(x)
            else:
                bands.append(Band(versus, margin, ahead, grid))
    return AxisReport(
        snr=snr,
        noiseless={d: interval(list(v.values())) for d, v in noiseless.items()},
        jammer=dict(jammer),
        floors=floors,
        weights_shift_db=None if signal is None else float(signal["weights_shift_db"]),
        bands=bands,
        limits=_limits(points, grid, defenses, noiseless, chance),
    )


def per_seed_chance(rows: Sequence[RunRecord]) -> SeedValues:
    """Seed -> the chance level of the runs of that seed (normalized, over subsets)."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        by_seed[r.config.seed].append(r.result.chance)
    return {s: math.fsum(v) / len(v) for s, v in sorted(by_seed.items())}


def _limits(
    points: Mapping[tuple[str, float], SeedValues],
    grid: Sequence[float],
    defenses: Sequence[str],
    noiseless: Mapping[str, SeedValues],
    chance: SeedValues,
) -> list[Limit]:
    """The limit checks (module docs) at the grid's ends."""
    if not grid:
        return []
    top, bottom = grid[-1], grid[0]
    checks: list[tuple[float, str, str, SeedValues]] = [
        (top, d, f"{d}, noiseless", noiseless[d]) for d in defenses if d in noiseless
    ]
    checks.append((bottom, "none", "chance", chance))
    if "shrink" in defenses and "base" in noiseless:
        checks.append((bottom, "shrink", "base", noiseless["base"]))
    out = []
    for x, defense, name, reference in checks:
        if (defense, x) not in points:
            continue
        diff = compare(points[(defense, x)], reference, "snr", "awgn", (defense, name)).difference
        out.append(Limit(x, defense, name, diff, _equal(diff)))
    return out
