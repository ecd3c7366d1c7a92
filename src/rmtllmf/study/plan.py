"""The plan of the paper's study: every run over task subsets, scenarios, links, defenses, seeds.

The plan (:func:`plan_runs`), for every task count ``N`` in ``task_counts`` and every subset of
that size (all ``C(T, N)`` combinations, 247 for ``N = 2..8`` of 8 tasks, or a seeded sample of
``subsets_per_count``):

* ``clean``: noiseless link, defense ``none`` and the floor ``base`` (the BS discards every
  received vector) at every ``N`` (Fig. 2's clean line and floor); at the largest ``N`` also
  ``realign`` (realign-on-clean, the control that separates what realignment *repairs* from
  what it *adds*) and the floor ``base+realign``. No channel changes them, so they run once per
  subset and stand in every scenario's table;
* ``fig2``: every scenario × link, defenses ``none`` and ``r-mtllmf`` (paper Fig. 2) and the
  ``extra_defenses`` on the ``extra_defense_links``;
* ``ablation``: at the largest ``N``, every scenario × link with all four defenses (Fig. 5,
  left) and the extra ones; the undefended runs carry the interference analysis (WDE,
  hypothesis test);
* ``kshot``: at the largest ``N``, R-MTLLMF (and each realigning extra defense) with ``k``
  samples per class for each ``k`` in ``k_values`` on the ideal and the first worst-case
  scenario, first link (Fig. 5, right);
* ``snr-axis`` and ``jammer-axis``: with ``snr_axis``, the ablation's defenses at the largest
  ``N`` against the per-entry SNR and the jammer's power (:mod:`rmtllmf.study.snr_axis`).

Every run is repeated for each of ``seeds``; the ``headline_seeds`` repeat only the largest N's
clean runs, its ablation on the first link and the SNR axis (the k sweep and the other links
keep ``seeds``).

The rank spectra (:mod:`rmtllmf.study.spectra`) are measured on :func:`spectra_receptions`: the
ablation's own channel uses of the largest ``N``'s first subset.

``λ_N`` (eq. 6) is chosen per task count on *validation* data (the clean merge of the first
subset of that size over ``lambda_grid``), stored, and used for every run of that size.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from rmtllmf.channel import ScenarioConfig, SymbolLinkConfig
from rmtllmf.defense import BLIND, CHANNEL_FREE, DEFENSES, PAPER, RealignConfig
from rmtllmf.errors import InputError
from rmtllmf.fusion import MergeConfig
from rmtllmf.fusion.method_registry import get_method
from rmtllmf.study.analysis import AnalysisConfig
from rmtllmf.study.experiment import LINKS, ExperimentConfig, LinkMode, Scenario, common_weight
from rmtllmf.study.snr_axis import SnrAxisConfig, axis_runs
from rmtllmf.study.spectra import SpectraConfig
from rmtllmf.training.loops import Precision

DEFAULT_GRID = tuple(round(float(x), 4) for x in np.linspace(0.0, 1.0, 21))


class SweepConfig(BaseModel):
    """What the sweep runs (frozen; stored beside the results)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    tasks: tuple[str, ...] = Field(..., min_length=1)
    task_counts: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    subsets_per_count: int | None = Field(
        None, ge=1, description="seeded sample of subsets per count; None = all combinations"
    )
    scenarios: tuple[Scenario, ...] = ("ideal", "sum-rate", "strongest-user")
    links: tuple[LinkMode, ...] = ("snr", "absolute", "relative", "weights", "symbol")
    k_values: tuple[int, ...] = (1, 2, 5, 10, 20)
    seeds: tuple[int, ...] = (0,)
    headline_seeds: tuple[int, ...] = Field(
        (),
        description="further seeds for the headline cells only: the largest N's ablation on "
        "the first link, its clean runs and the SNR axis (intervals where they matter most, at "
        "a fraction of the whole grid's cost)",
    )
    merge_method: str = "task-arithmetic"
    lambda_grid: tuple[float, ...] = DEFAULT_GRID
    realign: RealignConfig = RealignConfig()
    channel: ScenarioConfig = ScenarioConfig()
    symbol: SymbolLinkConfig = SymbolLinkConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    nan_policy: Literal["zero", "drop-user", "error"] = "zero"
    precision: Precision = Field(
        "fp32",
        description="arithmetic of every run's realignment and evaluation (bf16: autocast to "
        "bfloat16 where the CPU or GPU has it; docs/scaling.md)",
    )
    plan_seed: int = 0
    extra_defenses: tuple[str, ...] = Field(
        (),
        description="defenses run beside the paper's four in the ablation (e.g. the receiver "
        "defenses shrink, svd, gate, median, trimmed-mean, svd+r-mtllmf) in the ablation and "
        "Fig. 2, on the extra_defense_links they apply to; a realigning one also joins the k "
        "sweep",
    )
    extra_defense_links: tuple[LinkMode, ...] | None = Field(
        None,
        description="links the extra defenses run on; None: every link of the sweep they apply "
        "to (a blind defense needs a known noise law: not the symbol link)",
    )
    spectra: SpectraConfig | None = Field(
        SpectraConfig(),
        description="rank spectra of the clean and received task vectors (report figure); "
        "None: not measured",
    )
    snr_axis: SnrAxisConfig | None = Field(
        None,
        description="the largest N's defenses swept over the per-entry SNR and the jammer's "
        "power (report figure); None: not run",
    )

    @property
    def ablation_defenses(self) -> tuple[str, ...]:
        """The paper's four defenses and the extra ones (on a link that takes them all)."""
        return (*PAPER, *self.extra_defenses)

    @property
    def axis_defenses(self) -> tuple[str, ...]:
        """The defenses at each point of the SNR axis: its own list, else
        :attr:`ablation_defenses` (the axis's snr link takes every one)."""
        if self.snr_axis is not None and self.snr_axis.defenses:
            return self.snr_axis.defenses
        return self.ablation_defenses

    @model_serializer(mode="wrap")
    def _omit_default_precision(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``precision`` is left out of the dump at ``fp32``, so a study's stored config is what
        it was before studies could choose their precision."""
        data: dict[str, Any] = handler(self)
        if data.get("precision") == "fp32":
            data.pop("precision")
        return data

    def check(self) -> None:
        """Clear errors for plans that cannot run."""
        if len(set(self.tasks)) != len(self.tasks):
            raise InputError(f"tasks repeat: {list(self.tasks)}")
        too_big = [n for n in self.task_counts if not 1 <= n <= len(self.tasks)]
        if too_big:
            raise InputError(
                f"task counts {too_big} do not fit a suite of {len(self.tasks)} tasks; "
                f"use counts between 1 and {len(self.tasks)}"
            )
        if not self.task_counts or not self.links or not self.scenarios or not self.seeds:
            raise InputError("task_counts, scenarios, links and seeds must not be empty")
        seeds = (*self.seeds, *self.headline_seeds)
        if len(set(seeds)) != len(seeds) or any(x < 0 for x in seeds):
            raise InputError(
                f"seeds {list(self.seeds)} and headline_seeds {list(self.headline_seeds)} must be "
                "distinct non-negative integers; give each seed once"
            )
        if "awgn" in self.scenarios:
            raise InputError(
                "scenario awgn is the SNR axis's own (it needs a per-entry SNR); sweep it with "
                "snr_axis: {snr_db: [...]} instead of listing it under scenarios"
            )
        if any(k < 1 for k in self.k_values):
            raise InputError(
                f"k_values {list(self.k_values)}: realignment needs at least 1 sample per class; "
                "give values of 1 or more"
            )
        get_method(self.merge_method)  # an unknown method names the known ones
        aircomp = [link for link in self.links if LINKS[link].kind == "aircomp"]
        if aircomp:
            common_weight(MergeConfig(method=self.merge_method), 2, aircomp[0])
        unknown = [
            d for d in self.extra_defenses if d not in DEFENSES or d in (*PAPER, *CHANNEL_FREE)
        ]
        if unknown:
            extra = [d for d in DEFENSES if d not in (*PAPER, *CHANNEL_FREE)]
            raise InputError(
                f"extra_defenses {unknown} are not defenses beyond the paper's; choose from {extra}"
            )
        for what, chosen, allowed in (
            ("extra_defense_links", self.extra_defense_links, self.links),
            ("spectra.links", self.spectra and self.spectra.links, self.links),
            ("spectra.scenarios", self.spectra and self.spectra.scenarios, self.scenarios),
        ):
            stray = [x for x in chosen or () if x not in allowed]
            if stray:
                raise InputError(
                    f"{what} {stray} are not in the sweep's {list(allowed)}; choose among those"
                )
        if self.snr_axis is not None:
            self.snr_axis.check(self.ablation_defenses)
        if self.spectra and any(LINKS[lk].kind != "analog" for lk in self.spectra.links or ()):
            raise InputError(
                "spectra.links: the symbol link has no known noise law (no threshold to draw) and "
                "the AirComp links receive no user's vector; choose analog links"
            )


@dataclass(frozen=True)
class PlannedRun:
    """One run of the plan and the figure it feeds."""

    role: str
    config: ExperimentConfig


def subsets(cfg: SweepConfig) -> dict[int, list[tuple[str, ...]]]:
    """Task subsets per count: all combinations, or a seeded sample of them."""
    out = {}
    for n in sorted(set(cfg.task_counts)):
        combos = list(itertools.combinations(cfg.tasks, n))
        if cfg.subsets_per_count is not None and len(combos) > cfg.subsets_per_count:
            rng = np.random.default_rng([cfg.plan_seed, n])
            pick = sorted(rng.choice(len(combos), cfg.subsets_per_count, replace=False))
            combos = [combos[i] for i in pick]
        out[n] = combos
    return out


def kshot_scenarios(cfg: SweepConfig) -> list[Scenario]:
    """Scenarios of the k sweep: the ideal one (or the first) and the first worst case."""
    ideal = [s for s in cfg.scenarios if s.endswith("ideal")][:1] or list(cfg.scenarios[:1])
    worst = [s for s in cfg.scenarios if s not in ideal][:1]
    return ideal + worst


def plan_runs(cfg: SweepConfig, lambdas: dict[int, float]) -> list[PlannedRun]:
    """Every run of the sweep (see module docs), in a stable order."""
    cfg.check()
    runs: list[PlannedRun] = []
    by_count = subsets(cfg)
    largest = max(by_count)
    for n, combos in by_count.items():
        seeds = (*cfg.seeds, *(cfg.headline_seeds if n == largest else ()))
        for tasks, seed in itertools.product(combos, seeds):
            common: dict[str, Any] = {
                "tasks": tasks,
                "merge": MergeConfig(method=cfg.merge_method, scaling=lambdas[n]),
                "realign": cfg.realign,
                "channel": cfg.channel,
                "symbol": cfg.symbol,
                "nan_policy": cfg.nan_policy,
                "precision": cfg.precision,
                "seed": seed,
            }
            headline_only = seed not in cfg.seeds
            runs += _clean_runs(common, largest=n == largest)
            links = cfg.links[:1] if headline_only else cfg.links
            runs += _channel_runs(cfg, common, links, ablation=n == largest)
            if n == largest and not headline_only:
                runs += _kshot_runs(cfg, common)
            if n == largest and cfg.snr_axis is not None:
                runs += [
                    PlannedRun(role, config)
                    for role, config in axis_runs(cfg.snr_axis, cfg.axis_defenses, common)
                ]
    return runs


def _clean_runs(common: dict[str, Any], *, largest: bool) -> list[PlannedRun]:
    """The noiseless link: the clean merge and the floor ``base`` (Fig. 2), and at the largest
    N realign-on-clean and the floor ``base+realign`` (the summary's; nothing reads them at
    other N)."""
    defenses = ("none", "realign", *CHANNEL_FREE) if largest else ("none", "base")
    return [
        PlannedRun("clean", ExperimentConfig(link="noiseless", defense=defense, **common))
        for defense in defenses
    ]


def extra_defenses_on(cfg: SweepConfig, link: str) -> tuple[str, ...]:
    """The extra defenses that run on ``link``: none outside ``cfg.extra_defense_links``, no
    blind one on the symbol link (no known noise law to denoise with), and on an AirComp link
    none that needs each user's vector (gate, median, trimmed mean)."""
    if cfg.extra_defense_links is not None and link not in cfg.extra_defense_links:
        return ()
    kind = LINKS[link].kind
    return tuple(
        d
        for d in cfg.extra_defenses
        if not (kind == "symbol" and d in BLIND)
        and not (kind == "aircomp" and not DEFENSES[d].on_sum)
    )


def _channel_runs(
    cfg: SweepConfig, common: dict[str, Any], links: tuple[LinkMode, ...], *, ablation: bool
) -> list[PlannedRun]:
    """Every scenario × link of ``links``: Fig. 2's two defenses, or at the largest N the
    ablation's four (its undefended runs carry the interference analysis), each beside the
    extra defenses of that link (:func:`extra_defenses_on`)."""
    runs = []
    for scenario, link in itertools.product(cfg.scenarios, links):
        physical_only = LINKS[link].kind in ("symbol", "aircomp")
        if physical_only and scenario.startswith("paper-"):
            continue  # the digital and AirComp links need a physical channel
        paper = PAPER if ablation else ("none", "r-mtllmf")
        per_user = LINKS[link].kind != "aircomp"  # the analysis needs each received vector
        for defense in (*paper, *extra_defenses_on(cfg, link)):
            analysis = cfg.analysis if (ablation and defense == "none" and per_user) else None
            config = ExperimentConfig(
                scenario=scenario, link=link, defense=defense, analysis=analysis, **common
            )
            runs.append(PlannedRun("ablation" if ablation else "fig2", config))
    return runs


def _kshot_runs(cfg: SweepConfig, common: dict[str, Any]) -> list[PlannedRun]:
    """R-MTLLMF (and each realigning extra defense) with ``k`` samples per class on the k
    sweep's scenarios, first link (Fig. 5)."""
    runs = []
    link = cfg.links[0]
    realigning = ("r-mtllmf", *(d for d in extra_defenses_on(cfg, link) if DEFENSES[d].realign))
    for scenario, defense in itertools.product(kshot_scenarios(cfg), realigning):
        for k in cfg.k_values:
            if k == cfg.realign.k_per_class:
                continue  # that run is in the ablation already
            realign = cfg.realign.model_copy(update={"k_per_class": k})
            config = ExperimentConfig(
                scenario=scenario,
                link=link,
                defense=defense,
                **{**common, "realign": realign},
            )
            runs.append(PlannedRun("kshot", config))
    return runs


def spectra_receptions(cfg: SweepConfig, lambdas: dict[int, float]) -> list[ExperimentConfig]:
    """The channel uses whose rank spectra the report draws (:mod:`rmtllmf.study.spectra`): the
    ablation's undefended runs of the largest N's first subset and the first seed, on
    ``cfg.spectra``'s links (default: every link of the sweep but the symbol link) × scenarios
    (default: all), link by link; the very vectors those runs merge. Empty without
    ``cfg.spectra``."""
    if cfg.spectra is None:
        return []
    by_count = subsets(cfg)
    tasks = by_count[max(by_count)][0]
    links = cfg.spectra.links or tuple(lk for lk in cfg.links if LINKS[lk].kind == "analog")
    scenarios = cfg.spectra.scenarios or cfg.scenarios
    found = {
        (r.config.link, r.config.scenario): r.config.model_copy(update={"analysis": None})
        for r in plan_runs(cfg, lambdas)
        if r.role == "ablation"
        and r.config.defense == "none"
        and r.config.tasks == tasks
        and r.config.seed == cfg.seeds[0]
    }
    return [found[(lk, sc)] for lk in links for sc in scenarios if (lk, sc) in found]
