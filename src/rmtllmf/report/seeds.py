"""How sure each number is: 95% confidence intervals over seeds, and paired comparisons.

A seed draws the channel realization, the noise, the few-shot sample and the realignment order
(the experts keep the pool's own seed), so the seeds of a sweep are independent repetitions of
each cell. For one cell (link, scenario, defense at the largest ``N``) the value of seed ``s``
is the mean normalized accuracy over the subsets run with that seed, ``x_s``; over ``n`` seeds

* the interval is Student's ``t``: ``mean ± t_{0.975, n-1} · sd / sqrt(n)`` (``sd`` with
  ``n - 1`` degrees of freedom); one seed gives no interval;
* two defenses on the same link and scenario saw the same channel draw under each seed (they
  share its reception), so their comparison is paired: ``d_s = x_s(A) - x_s(B)``, the two-sided
  paired ``t``-test of ``mean(d) = 0`` at ``α = 0.05``. The ordering ``A > B`` *holds* when the
  test rejects with ``mean(d) > 0``, is *reversed* when it rejects with ``mean(d) < 0``, and is
  *not resolved* otherwise (always with fewer than two seeds, or when every ``d_s`` is 0).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from scipy import stats

from rmtllmf.study.store import RunRecord

ALPHA = 0.05
"""Two-sided level of the paired test (and 1 - the intervals' coverage)."""
TEST_NAME = "two-sided paired t-test over seeds (both defenses on each seed's channel draw)"

Verdict = Literal["holds", "reversed", "not resolved"]


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` seeds and its 95% interval (``lo = hi = mean`` for one seed)."""

    mean: float
    lo: float
    hi: float
    n: int

    def to_json(self) -> dict[str, Any]:
        """As in ``summary.json``."""
        return asdict(self)


def interval(values: Sequence[float]) -> Interval:
    """The mean of ``values`` and its ``t`` interval at level ``1 - ALPHA`` (module docs)."""
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, mean, mean, 1)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def per_seed(rows: Iterable[RunRecord]) -> dict[int, float]:
    """Seed -> the mean normalized accuracy of ``rows`` run with that seed (over subsets)."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        by_seed[r.config.seed].append(r.result.normalized)
    return {s: math.fsum(v) / len(v) for s, v in sorted(by_seed.items())}


@dataclass(frozen=True)
class Comparison:
    """``better > worse`` on one link and scenario, tested over paired seeds."""

    link: str
    scenario: str
    better: str
    worse: str
    difference: Interval
    """``mean(d)`` and its interval, ``d_s = x_s(better) - x_s(worse)``."""
    p_value: float
    verdict: Verdict

    def to_json(self) -> dict[str, Any]:
        """As in ``summary.json``'s ``uncertainty.comparisons``."""
        out = asdict(self)
        out["difference"] = self.difference.to_json()
        return out


def compare(
    better: Mapping[int, float],
    worse: Mapping[int, float],
    link: str,
    scenario: str,
    names: tuple[str, str],
) -> Comparison:
    """The paired test of ``names[0] > names[1]`` over the seeds both have (module docs)."""
    seeds = sorted(set(better) & set(worse))
    diffs = [better[s] - worse[s] for s in seeds]
    diff = interval(diffs)
    p = math.nan
    if len(diffs) >= 2:
        sd = math.sqrt(math.fsum((d - diff.mean) ** 2 for d in diffs) / (len(diffs) - 1))
        if sd > 0:
            t = diff.mean / (sd / math.sqrt(len(diffs)))
            p = float(2 * stats.t.sf(abs(t), len(diffs) - 1))
    verdict: Verdict = "not resolved"
    if p == p and p < ALPHA:
        verdict = "holds" if diff.mean > 0 else "reversed"
    return Comparison(link, scenario, names[0], names[1], diff, p, verdict)


ORDERINGS: tuple[tuple[str, str], ...] = (
    ("r-mtllmf", "none"),
    ("r-mtllmf", "realign"),
    ("r-mtllmf", "freeze"),
    ("realign", "none"),
    ("shrink", "r-mtllmf"),
    ("svd", "r-mtllmf"),
    ("svd+r-mtllmf", "r-mtllmf"),
)
"""The orderings the report tests, where both defenses ran: the paper's (R-MTLLMF above no
defense and above each of its modules) and the receiver defenses against R-MTLLMF."""


@dataclass(frozen=True)
class Uncertainty:
    """``summary.json``'s ``uncertainty``: intervals of every cell at the largest ``N`` and of
    the floors, and the paired comparisons."""

    seeds: list[int]
    clean: Interval
    base: Interval
    by_link: dict[str, dict[str, dict[str, Interval]]]
    comparisons: list[Comparison]

    def to_json(self) -> dict[str, Any]:
        """As in ``summary.json``."""
        return {
            "seeds": self.seeds,
            "level": 1 - ALPHA,
            "test": TEST_NAME,
            "clean": self.clean.to_json(),
            "base": self.base.to_json(),
            "by_link": {
                link: {s: {d: i.to_json() for d, i in cell.items()} for s, cell in cells.items()}
                for link, cells in self.by_link.items()
            },
            "comparisons": [c.to_json() for c in self.comparisons],
        }


def uncertainty(rows: Sequence[RunRecord], n_tasks: int) -> Uncertainty:
    """Intervals and paired comparisons of the ablation at ``n_tasks`` (module docs)."""
    at_n = [r for r in rows if len(r.config.tasks) == n_tasks]
    ablation = [r for r in at_n if r.role == "ablation"]
    cells: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    for r in ablation:
        cells[(r.config.link, r.config.scenario, r.config.defense)].append(r)
    values = {key: per_seed(group) for key, group in cells.items()}
    by_link: dict[str, dict[str, dict[str, Interval]]] = defaultdict(lambda: defaultdict(dict))
    for (link, scenario, defense), seeds in values.items():
        by_link[link][scenario][defense] = interval(list(seeds.values()))
    comparisons = [
        compare(values[(link, scenario, a)], values[(link, scenario, b)], link, scenario, (a, b))
        for link, scenario in dict.fromkeys((k[0], k[1]) for k in values)
        for a, b in ORDERINGS
        if (link, scenario, a) in values and (link, scenario, b) in values
    ]

    def floor(defense: str) -> Interval:
        noiseless = [
            r for r in at_n if r.config.link == "noiseless" and r.config.defense == defense
        ]
        return interval(list(per_seed(noiseless).values()))

    return Uncertainty(
        seeds=sorted({r.config.seed for r in ablation}),
        clean=floor("none"),
        base=floor("base"),
        by_link={link: dict(v) for link, v in by_link.items()},
        comparisons=comparisons,
    )
