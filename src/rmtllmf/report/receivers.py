"""MMSE-SIC against AirComp: the two receivers per scenario, at equal channel uses and power.

For every scenario × link of the ablation at the largest ``N`` (a sweep with an AirComp link),
from the runs' uplink figures (:func:`rmtllmf.study.experiment.uplink_figures`):

* ``nmse``: the measured error of the merge's sum, ``|sum_hat - sum_q tau_q|^2 /
  |sum_q tau_q|^2``, mean and 95% interval over seeds (:mod:`rmtllmf.report.seeds`);
* ``sum_mse``: the closed form per entry the receiver's design promises (MMSE-SIC on an analog
  link: ``sum_q mu_q s_q``; AirComp: ``sum_q |g_q - w_q|^2 + m^H C m``);
* ``energy``: the users' mean transmit power over their peak (MMSE-SIC: 1);
* the normalized accuracy of each defense that ran there, mean and interval over seeds;
* on an AirComp link, each defense's paired difference to MMSE-SIC on the ``snr`` link over
  seeds (:func:`rmtllmf.report.seeds.compare`: both saw the same channel draw per seed).

Both receivers use every user's ``ceil(D / 2)`` channel uses at once under the same peak power
``p_q`` and the same drawn channel and jammer for a seed (the AirComp jammers are built with the
users' scales whatever the link), so the comparison is paired by seed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rmtllmf.report.seeds import Comparison, Interval, compare, interval, per_seed
from rmtllmf.report.tables import largest_n
from rmtllmf.study.store import RunRecord

RECEIVER_LINKS = ("snr", "aircomp", "aircomp-zf")
"""The links the comparison sets side by side: MMSE-SIC on the ``snr`` link's symbols and the
two AirComp transceivers on the same symbols."""


@dataclass(frozen=True)
class ReceiverRow:
    """One scenario × link at the largest ``N``."""

    scenario: str
    link: str
    nmse: Interval
    sum_mse: float
    energy: float
    accuracy: dict[str, Interval]
    versus_sic: dict[str, Comparison] = field(default_factory=dict)
    """defense -> this receiver minus MMSE-SIC (``snr``), paired by seed (AirComp rows)."""

    def to_json(self) -> dict[str, Any]:
        """As in ``summary.json``'s ``receivers``."""
        return {
            "scenario": self.scenario,
            "link": self.link,
            "nmse": self.nmse.to_json(),
            "sum_mse": self.sum_mse,
            "energy": self.energy,
            "accuracy": {d: i.to_json() for d, i in self.accuracy.items()},
            "versus_sic": {d: c.to_json() for d, c in self.versus_sic.items()},
        }


def _figure_per_seed(rows: Sequence[RunRecord], name: str) -> dict[int, float]:
    by_seed: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if name in r.result.uplink:
            by_seed[r.config.seed].append(r.result.uplink[name])
    return {s: math.fsum(v) / len(v) for s, v in sorted(by_seed.items())}


def receiver_table(rows: Sequence[RunRecord]) -> list[ReceiverRow]:
    """The comparison's rows (module docs); empty unless the ablation ran an AirComp link."""
    n = largest_n(rows)
    ablation = [r for r in rows if r.role == "ablation" and len(r.config.tasks) == n]
    if not any(r.config.link.startswith("aircomp") for r in ablation):
        return []
    out = []
    scenarios = dict.fromkeys(r.config.scenario for r in ablation)
    for scenario in scenarios:
        for link in RECEIVER_LINKS:
            cell = [r for r in ablation if r.config.scenario == scenario and r.config.link == link]
            if not cell:
                continue
            undefended = [r for r in cell if r.config.defense == "none"]
            nmse = _figure_per_seed(undefended, "nmse")
            sum_mse = _figure_per_seed(undefended, "sum_mse")
            energy = _figure_per_seed(undefended, "energy")
            seeds = {
                d: per_seed(r for r in cell if r.config.defense == d)
                for d in dict.fromkeys(r.config.defense for r in cell)
            }
            accuracy = {d: interval(list(v.values())) for d, v in seeds.items()}
            versus = {}
            if link != "snr":
                sic = [
                    r for r in ablation if r.config.scenario == scenario and r.config.link == "snr"
                ]
                for d, mine in seeds.items():
                    theirs = per_seed(r for r in sic if r.config.defense == d)
                    if theirs:
                        versus[d] = compare(mine, theirs, link, scenario, (link, "snr"))
            out.append(
                ReceiverRow(
                    scenario=scenario,
                    link=link,
                    nmse=interval(list(nmse.values())),
                    sum_mse=_mean(sum_mse.values()),
                    energy=_mean(energy.values()),
                    accuracy=accuracy,
                    versus_sic=versus,
                )
            )
    return out


def _mean(values: Any) -> float:
    vals = list(values)
    return math.fsum(vals) / len(vals) if vals else math.nan
