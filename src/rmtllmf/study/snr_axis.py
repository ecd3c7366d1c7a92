"""The SNR axis: the study at the largest ``N`` swept over the noise's strength.

Every other cell of the study sits at one operating point, the paper's. The axis runs the
ablation's defenses at the largest task count

* against the per-entry SNR ``snr_db`` (role ``snr-axis``): the ``awgn`` scenario on the ``snr``
  link, every user's entries received as ``tau_q + N(0, E[tau_q^2] 10^(-snr_db/10))`` (no
  channel drawn; :func:`rmtllmf.study.experiment.awgn_mse`), from the noiseless limit to the
  destroyed one, and each defense on the noiseless link (the limit of infinite SNR; the clean
  runs hold those of ``none`` and ``realign``);
* against the jammer's power (role ``jammer-axis``): the physical ``jammer_scenarios`` on the
  ``jammer_links`` (default the ``snr`` link) with the jammer-to-noise ratio ``jnr_db``
  (``ScenarioConfig.jnr_db``); on the ``snr`` link each user's per-entry SNR ``S_ref / mu_q``
  is then set by its MMSE-SIC MSE (eq. 5), on an AirComp link the sum's noise by the
  transceiver (:mod:`rmtllmf.channel.aircomp`).

Each point runs every seed of the sweep, so the report draws it with its 95% interval.

The paper's operating points on the per-entry SNR axis are ``10 log10(S_ref / mu)`` at its
reported mean MSEs (:data:`PAPER_POINTS`): -16.2 dB (ideal), -27.1 dB (strongest user),
-28.3 dB (sum rate).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rmtllmf.channel import PAPER_SIGNAL_POWER
from rmtllmf.channel.scenario import ScenarioName
from rmtllmf.defense import CHANNEL_FREE, DEFENSES
from rmtllmf.errors import InputError
from rmtllmf.fusion import TaskVector
from rmtllmf.pools.base import ModelPool
from rmtllmf.study.experiment import LINKS, PAPER_MSE, ExperimentConfig, LinkMode
from rmtllmf.study.payload import clean_vectors

CLEAN_DEFENSES = ("none", "realign", *CHANNEL_FREE)
"""The defenses the plan's clean runs already take on the noiseless link at the largest N."""

DEFAULT_SNR_DB: tuple[float, ...] = tuple(float(x) for x in range(-40, 31, 5))
"""-40 to +30 dB in 5 dB steps: from a merge at chance to one equal to the clean merge."""

PAPER_POINTS: dict[str, float] = {
    name.removeprefix("paper-"): round(10.0 * math.log10(PAPER_SIGNAL_POWER / mu), 2)
    for name, mu in PAPER_MSE.items()
}
"""The paper's operating points on the per-entry SNR axis (dB), by scenario (module docs)."""


class SnrAxisConfig(BaseModel):
    """What the SNR axis runs (frozen; a field of the sweep config)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    snr_db: tuple[float, ...] = Field(
        DEFAULT_SNR_DB,
        description="per-entry SNRs (dB) of the awgn scenario on the snr link; () skips them",
    )
    jnr_db: tuple[float, ...] = Field(
        (),
        description="jammer-to-noise ratios (dB) of the jammer_scenarios on the snr link; () "
        "skips them",
    )
    jammer_scenarios: tuple[ScenarioName, ...] = ("sum-rate",)
    jammer_links: tuple[LinkMode, ...] = Field(
        ("snr",),
        description="links of the jammer axis: snr (MMSE-SIC), and aircomp / aircomp-zf to set "
        "the over-the-air receivers beside it",
    )
    defenses: tuple[str, ...] | None = Field(
        None,
        description="defenses at each point; None: the ablation's on the snr link (the "
        "paper's four and the extra defenses)",
    )

    def check(self, known: tuple[str, ...]) -> None:
        """Clear errors for an axis that cannot run (``known``: the sweep's defenses)."""
        for name, values in (("snr_db", self.snr_db), ("jnr_db", self.jnr_db)):
            if any(abs(v) > 200 for v in values):
                raise InputError(f"snr_axis.{name} {list(values)}: give values within ±200 dB")
            if len(set(values)) != len(values):
                raise InputError(f"snr_axis.{name} repeats a value: {list(values)}")
        if not self.snr_db and not self.jnr_db:
            raise InputError(
                "snr_axis has neither snr_db nor jnr_db points; give one of them, or drop snr_axis"
            )
        wrong = [lk for lk in self.jammer_links if LINKS[lk].kind not in ("analog", "aircomp")]
        if wrong or not self.jammer_links:
            raise InputError(
                f"snr_axis.jammer_links {list(self.jammer_links)}: give analog or AirComp links "
                "(snr, aircomp, aircomp-zf, ...)"
            )
        stray = [d for d in self.defenses or () if d not in known]
        if stray:
            raise InputError(
                f"snr_axis.defenses {stray} do not run in this sweep; choose among {list(known)}"
            )


def axis_runs(
    axis: SnrAxisConfig, defenses: tuple[str, ...], common: dict[str, Any]
) -> list[tuple[str, ExperimentConfig]]:
    """The axis's runs for one subset and seed (``common``: the run's shared fields), as
    ``(role, config)`` in a stable order: each point's defenses share its channel use."""
    chosen = axis.defenses or defenses
    runs = [
        ("snr-axis", ExperimentConfig(link="noiseless", defense=d, **common))
        for d in chosen
        if d not in CLEAN_DEFENSES
    ]
    runs += [
        ("snr-axis", ExperimentConfig(scenario="awgn", link="snr", snr_db=snr, defense=d, **common))
        for snr, d in itertools.product(axis.snr_db, chosen)
    ]
    channel = common["channel"]
    rest = {k: v for k, v in common.items() if k != "channel"}
    for link, scenario, jnr in itertools.product(
        axis.jammer_links, axis.jammer_scenarios, axis.jnr_db
    ):
        jammed = channel.model_copy(update={"jnr_db": jnr, "jammer_dbm": None})
        runs += [
            (
                "jammer-axis",
                ExperimentConfig(scenario=scenario, link=link, defense=d, channel=jammed, **rest),
            )
            for d in chosen
            if LINKS[link].kind != "aircomp" or DEFENSES[d].on_sum
        ]
    return runs


SIGNAL_META = "signal_power"
"""The results database's meta key of :func:`signal_power` (the report's second axis)."""


def signal_power(pool: ModelPool, tasks: tuple[str, ...]) -> dict[str, float]:
    """The mean squares the axes are measured against, over the entries the users send: the
    base weights' ``E[theta^2]`` and the users' mean ``E[tau_q^2]``. On the awgn scenario the
    noise power is ``E[tau_q^2] 10^(-snr_db/10)``, so relative to the weights the SNR is
    ``snr_db + 10 log10(E[theta^2] / E[tau^2])`` (``weights_shift_db``): the axis on which two
    models with task vectors of different scales can be compared."""
    base = pool.base_state
    vectors = clean_vectors(pool, tasks, base)
    layout = vectors[0].layout
    weights = TaskVector({k: base[k] for k in layout.names}).flatten().astype(np.float64)
    p_theta = float(np.mean(weights**2))
    p_tau = float(np.mean([np.mean(v.flatten().astype(np.float64) ** 2) for v in vectors]))
    return {
        "weights": p_theta,
        "task_vectors": p_tau,
        "weights_shift_db": 10.0 * math.log10(p_theta / p_tau),
    }
