"""One run of the paper's pipeline: users -> channel -> BS merge -> defense -> evaluation.

A run takes a subset of tasks (one user per task), a scenario and a link mode, a merge, a
defense and a seed:

* scenarios: ``ideal``, ``sum-rate``, ``strongest-user`` (geometry, fading and jammer from
  :mod:`rmtllmf.channel`, each user's MSE from eq. 5), or the ``paper-*`` presets that inject the
  paper's reported mean MSEs (0.013 ideal, 0.21 sum-rate, 0.16 strongest-user) for every user;
  or ``awgn``: no channel is drawn, every user's entries see the per-entry SNR ``snr_db`` on a
  power-scaled link (``mu_q = S_ref 10^(-snr_db/10)`` on ``snr``, ``10^(-snr_db/10)`` on
  ``relative`` and ``weights``): the SNR axis (:mod:`rmtllmf.study.snr_axis`);
* link modes: ``noiseless`` (a clean run through the same pipeline); ``absolute`` (the paper:
  ``tau + N(0, mu_q)``); ``snr`` (the paper's per-entry SNR on this model's task vectors:
  ``N(0, mu_q E[tau_q^2] / S_ref)``, ``S_ref`` the paper's task-vector power, 3.1e-4;
  ``snr-tensor`` takes ``E[tau^2]`` per tensor instead);
  ``relative`` (per-tensor power-normalised analog link,
  ``N(0, mu_q E[tau^2])``); ``weights`` (the user sends ``theta_ft`` power-normalised per tensor,
  ``N(0, mu_q E[theta^2])``, and the BS subtracts ``theta_base``); ``symbol`` (the digital link:
  quantise, QAM, MMSE-SIC with decision feedback, demap); ``aircomp`` and ``aircomp-zf``
  (over-the-air computation of the sum with the MMSE or the unbiased transceiver,
  :mod:`rmtllmf.channel.aircomp_link`, on the ``snr`` link's symbols: the base station receives
  one estimate of ``sum_q tau_q``, which a merge linear in the models with equal weights turns
  into the merged model);
* the scenarios ``aircomp-maxmin`` and ``aircomp-aligned`` draw the jammers built against
  AirComp (:mod:`rmtllmf.channel.aircomp_jammer`), with the users' ``snr`` scales
  ``sqrt(E[tau_q^2] / S_ref)`` as the weights the jammer knows; like P1 and P2 they apply to
  every link, so MMSE-SIC and AirComp meet the same covariance;
* received vectors with NaN/Inf are handled by ``nan_policy``: ``zero`` replaces the bad
  entries by 0 (the BS keeps the base value there), ``drop-user`` leaves that user out of the
  merge, ``error`` stops the run. Nothing non-finite is ever merged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from rmtllmf.channel import (
    PAPER_SIGNAL_POWER,
    SCENARIOS,
    ChannelRealization,
    LargeScale,
    ScenarioConfig,
    SymbolLinkConfig,
    UserLinkStats,
    draw_large_scale,
    noise_variance,
    realize,
    transmit_statistical,
    transmit_symbols,
    user_mse,
)
from rmtllmf.channel.aircomp import DesignName
from rmtllmf.channel.aircomp_link import AirCompResult, transmit_aircomp
from rmtllmf.channel.link import NoiseScale, segment_scales
from rmtllmf.defense import (
    DEFENSES,
    REALIGNING,
    FewShotSet,
    RealignConfig,
    RealignLog,
    apply_defense,
    blind_defense,
    few_shot_set,
    get_defense,
)
from rmtllmf.errors import InputError
from rmtllmf.fusion import MergeConfig, TaskVector, VectorLayout, cosine_matrix, merge_task_vectors
from rmtllmf.fusion.method_registry import linear_weights
from rmtllmf.metrics import normalized_accuracy
from rmtllmf.pools.base import ModelPool
from rmtllmf.study.analysis import Analysis, AnalysisConfig, interference_analysis, state_digest
from rmtllmf.study.payload import (
    clean_vectors,
    deltas_from_factors,
    sent_vectors,
    zero_offsets,
)
from rmtllmf.training.loops import Precision, compute_precision

Scenario = Literal[
    "ideal",
    "sum-rate",
    "strongest-user",
    "paper-ideal",
    "paper-sum-rate",
    "paper-strongest-user",
    "awgn",
    "aircomp-maxmin",
    "aircomp-aligned",
]
LinkMode = Literal[
    "noiseless",
    "absolute",
    "snr",
    "snr-tensor",
    "relative",
    "weights",
    "symbol",
    "aircomp",
    "aircomp-zf",
]
PAPER_MSE = {"paper-ideal": 0.013, "paper-sum-rate": 0.21, "paper-strongest-user": 0.16}


@dataclass(frozen=True)
class Link:
    """How a link carries a user's flat task vector to the BS.

    An *analog* link (``scale`` set) is eq. 9's ``tau_hat_q = tau_q + eps_q`` with
    ``eps_q ~ N(0, mu_q s_q)`` (:func:`rmtllmf.channel.transmit_statistical`), ``s_q`` by
    ``scale`` (``absolute``: 1; ``snr``: ``E[tau_q^2] / S_ref``; ``relative``: the power of what
    is sent), measured per tensor where ``per_segment``; ``on_weights`` sends the fine-tuned
    weights ``theta_0 + tau_q`` and subtracts ``theta_0`` after. The BS knows that noise law
    (:func:`rmtllmf.channel.noise_variance`), which the receiver defenses need. ``noiseless``
    passes the vector as sent; ``symbol`` quantises it and sends QAM symbols through the drawn
    MIMO channel to the MMSE-SIC detector (:func:`rmtllmf.channel.transmit_symbols`);
    ``aircomp`` sends the symbols of the analog link of the same ``scale`` all at once and
    receives their sum with the transceiver ``design``
    (:func:`rmtllmf.channel.aircomp_link.transmit_aircomp`).
    """

    kind: Literal["noiseless", "analog", "symbol", "aircomp"]
    scale: NoiseScale | None = None
    per_segment: bool = False
    on_weights: bool = False
    design: DesignName = "mmse"


LINKS: dict[str, Link] = {
    "noiseless": Link("noiseless"),
    "absolute": Link("analog", "absolute"),
    "snr": Link("analog", "snr"),
    "snr-tensor": Link("analog", "snr", per_segment=True),
    "relative": Link("analog", "relative"),
    "weights": Link("analog", "relative", on_weights=True),
    "symbol": Link("symbol"),
    "aircomp": Link("aircomp", "snr"),
    "aircomp-zf": Link("aircomp", "snr", design="zf"),
}
"""Every link mode (:data:`LinkMode`), one entry each: the only place a link is told apart."""
AWGN_LINKS = tuple(
    name
    for name, link in LINKS.items()
    if link.kind == "analog" and link.scale in ("snr", "relative")
)
"""The links whose noise scales with what is sent: the ``awgn`` scenario sets their SNR."""


def awgn_mse(link: str, snr_db: float) -> float:
    """The MSE ``mu`` that gives every entry the per-entry SNR ``snr_db`` on ``link``: the
    ``snr`` links' noise is ``mu E[tau^2] / S_ref``, so ``mu = S_ref 10^(-snr_db/10)``; the
    ``relative`` links' is ``mu E[x^2]``, so ``mu = 10^(-snr_db/10)``."""
    ratio = float(10.0 ** (-snr_db / 10.0))
    return PAPER_SIGNAL_POWER * ratio if LINKS[link].scale == "snr" else ratio


def _weights_offset(base: Mapping[str, torch.Tensor], layout: VectorLayout) -> NDArray[np.float32]:
    """``theta_0`` flattened in the task vectors' layout (what an ``on_weights`` link adds)."""
    return TaskVector({k: base[k] for k in layout.names}).flatten()


class ExperimentConfig(BaseModel):
    """Everything that defines one run (frozen; its JSON is the run's identity)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: tuple[str, ...]
    scenario: Scenario = "ideal"
    link: LinkMode = "absolute"
    merge: MergeConfig = MergeConfig(scaling=0.3)
    defense: str = "none"
    realign: RealignConfig = RealignConfig()
    channel: ScenarioConfig = ScenarioConfig()
    symbol: SymbolLinkConfig = SymbolLinkConfig()
    nan_policy: Literal["zero", "drop-user", "error"] = "zero"
    split: Literal["val", "test"] = "test"
    analysis: AnalysisConfig | None = None
    seed: int = Field(0, ge=0)
    payload: Literal["delta", "factors"] = Field(
        "delta",
        description="what a user sends: its task vector, or a LoRA user's factors A and B "
        "(rmtllmf.study.payload)",
    )
    snr_db: float | None = Field(
        None,
        ge=-200,
        le=200,
        description="the awgn scenario's per-entry SNR in dB (every user; set exactly when the "
        "scenario is awgn)",
    )
    precision: Precision = Field(
        "fp32",
        description="arithmetic of realignment and evaluation (bf16: autocast, "
        "rmtllmf.training.loops.compute_precision)",
    )

    @model_serializer(mode="wrap")
    def _omit_default_precision(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``precision`` is left out of the dump at ``fp32``: a run's identity (its JSON) is
        what it was before runs could choose their precision."""
        data: dict[str, Any] = handler(self)
        if data.get("precision") == "fp32":
            data.pop("precision")
        return data

    @model_validator(mode="after")
    def _awgn_has_its_snr(self) -> ExperimentConfig:
        if (self.scenario == "awgn") != (self.snr_db is not None):
            raise InputError(
                "snr_db sets the awgn scenario's per-entry SNR: give both scenario 'awgn' and "
                "snr_db, or neither"
            )
        if self.scenario == "awgn" and self.link not in AWGN_LINKS:
            raise InputError(
                f"the awgn scenario sets the per-entry SNR of a power-scaled link "
                f"({', '.join(AWGN_LINKS)}), not the {self.link} link"
            )
        return self


@dataclass
class ExperimentResult:
    """What one run measured."""

    config: ExperimentConfig
    mse: NDArray[np.float64]
    accuracy: dict[str, float]
    normalized: float
    received_cosine: NDArray[np.float64]
    error_mse: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    dropped_users: list[int] = field(default_factory=list)
    nonfinite_entries: int = 0
    analysis: Analysis | None = None
    chance: float = float("nan")
    """Normalized accuracy of a uniform guess on the same tasks (``1 / classes`` per task)."""
    realign_curve: list[tuple[int, float]] = field(default_factory=list)
    """Validation curve of the realignment ``(step, mean accuracy)`` (empty: not validated)."""
    realign_kept_step: int = 0
    """The realignment step whose state was kept (0: no realignment or none helped)."""
    uplink: dict[str, float] = field(default_factory=dict)
    """The uplink's figures for the merge's sum (:func:`uplink_figures`): ``sum_mse``, ``nmse``,
    ``energy`` (empty on the noiseless link)."""


@dataclass(frozen=True)
class PhysicalChannel:
    """A drawn uplink: the realization, its scenario and geometry (for block-fading redraws)."""

    realization: ChannelRealization
    scenario: ScenarioConfig
    large_scale: LargeScale
    weights: NDArray[np.float64] | None = None
    """The users' scales the AirComp jammers were built against."""


def jammer_weights(clean: list[TaskVector]) -> NDArray[np.float64]:
    """The users' scales the AirComp jammers are built against: ``sqrt(E[tau_q^2] / S_ref)``,
    the ``snr`` link's (the same covariance then meets every link)."""
    return np.array(
        [
            float(np.sqrt(np.mean(tv.flatten().astype(np.float64) ** 2) / PAPER_SIGNAL_POWER))
            for tv in clean
        ]
    )


def channel_mse(
    cfg: ExperimentConfig,
    rng: np.random.Generator,
    weights: NDArray[np.float64] | None = None,
) -> tuple[NDArray[np.float64], PhysicalChannel | None]:
    """Eq. 5: each user's MSE ``mu_q`` and the drawn channel (``None`` for presets);
    ``weights`` for the AirComp jammers (:func:`jammer_weights`)."""
    if cfg.scenario in PAPER_MSE:
        return np.full(len(cfg.tasks), PAPER_MSE[cfg.scenario]), None
    if cfg.scenario == "awgn" and cfg.snr_db is not None:
        return np.full(len(cfg.tasks), awgn_mse(cfg.link, cfg.snr_db)), None
    scenario = cfg.channel.model_copy(update={"scenario": cfg.scenario, "n_users": len(cfg.tasks)})
    large = draw_large_scale(scenario, rng)
    channel = realize(scenario, large, rng, weights)
    mu = user_mse(channel.H, channel.p, channel.C_z)
    return mu, PhysicalChannel(channel, scenario, large, weights)


def transmit_link(
    cfg: ExperimentConfig,
    clean: list[TaskVector],
    base: dict[str, torch.Tensor],
    mu: NDArray[np.float64],
    channel: PhysicalChannel | None,
    rng: np.random.Generator,
) -> tuple[list[NDArray[np.float32]], list[UserLinkStats]]:
    """Send the flattened task vectors over ``cfg.link`` (users with MSEs ``mu``; ``channel``
    for the symbol link) and return what the BS receives, one flat vector per user, with the
    symbol link's per-user statistics (measured BER, symbol MSE; empty on the other links)."""
    layout = clean[0].layout
    seg = [layout.segments] * len(clean)
    flats = [tv.flatten() for tv in clean]
    link = LINKS[cfg.link]
    if link.kind == "noiseless":
        return flats, []
    if link.scale is not None:
        offset = _weights_offset(base, layout) if link.on_weights else None
        sent = flats if offset is None else [f + offset for f in flats]
        received = transmit_statistical(
            sent, mu, rng, scale=link.scale, segments=seg, per_segment=link.per_segment
        )
        return (received if offset is None else [r - offset for r in received]), []
    physical = _physical(cfg, channel)
    result = transmit_symbols(
        flats,
        physical.realization,
        cfg.symbol,
        rng,
        segments=seg,
        redraw=lambda g: realize(physical.scenario, physical.large_scale, g, physical.weights),
    )
    return result.received, list(result.stats)


def _physical(cfg: ExperimentConfig, channel: PhysicalChannel | None) -> PhysicalChannel:
    """The drawn channel that the symbol and AirComp links need; an error for presets."""
    if channel is None:
        raise InputError(
            f"the {cfg.link} link needs a physical scenario ("
            + ", ".join(SCENARIOS)
            + "), not a paper-* MSE preset or awgn"
        )
    return channel


def transmit_sum(
    cfg: ExperimentConfig,
    clean: list[TaskVector],
    channel: PhysicalChannel | None,
    rng: np.random.Generator,
) -> AirCompResult:
    """Send the flattened task vectors over the AirComp link ``cfg.link`` at once and return
    the base station's estimate of their sum
    (:func:`rmtllmf.channel.aircomp_link.transmit_aircomp`)."""
    link = LINKS[cfg.link]
    assert link.scale is not None
    physical = _physical(cfg, channel)
    return transmit_aircomp(
        [tv.flatten() for tv in clean],
        physical.realization,
        rng,
        scale=link.scale,
        segments=clean[0].layout.segments,
        per_segment=link.per_segment,
        design=link.design,
    )


def _received_vectors(
    cfg: ExperimentConfig, received: list[NDArray[np.float32]], clean: list[TaskVector]
) -> tuple[list[tuple[int, TaskVector]], int]:
    """Apply the NaN policy: the (user, vector) pairs that enter the merge and the bad count."""
    keep, bad_total = [], 0
    layout = clean[0].layout
    for q, vec in enumerate(received):
        bad = ~np.isfinite(vec)
        if bad.any():
            bad_total += int(bad.sum())
            if cfg.nan_policy == "error":
                raise InputError(
                    f"user {q} ({cfg.tasks[q]}) received {int(bad.sum())} NaN/Inf "
                    "entries; choose nan_policy 'zero' or 'drop-user' to continue"
                )
            if cfg.nan_policy == "drop-user":
                continue
            vec = np.where(bad, 0.0, vec).astype(np.float32)
        keep.append((q, TaskVector.from_flat(vec, layout)))
    return keep, bad_total


def _validate(pool: ModelPool, cfg: ExperimentConfig) -> None:
    unknown = [t for t in cfg.tasks if t not in pool.finetuned]
    if unknown:
        raise InputError(f"tasks {unknown} are not in this model pool ({sorted(pool.finetuned)})")
    if len(set(cfg.tasks)) != len(cfg.tasks) or not cfg.tasks:
        raise InputError("give each task once, at least one task")
    if cfg.payload == "factors" and get_defense(cfg.defense).blind:
        raise InputError(
            f"defense {cfg.defense} denoises with the noise law of a task vector; on a factor "
            "payload the noise reaches the rebuilt delta through the other factor. Use payload "
            "'delta' or a defense without a blind stage"
        )
    if LINKS[cfg.link].kind == "aircomp":
        _check_aircomp(cfg)


def _check_aircomp(cfg: ExperimentConfig) -> None:
    """What the AirComp link cannot do: it delivers only the sum of the task vectors."""
    defense = get_defense(cfg.defense)
    whose = f"the {cfg.link} link delivers only the sum of the users' task vectors"
    if cfg.payload == "factors":
        raise InputError(f"{whose}; a sum of LoRA factors is no sum of deltas: use payload 'delta'")
    if not defense.on_sum:
        on_sum = ", ".join(name for name, d in DEFENSES.items() if d.on_sum)
        raise InputError(
            f"{whose}, so defense {cfg.defense} (which needs each user's vector) cannot run on "
            f"it; choose among {on_sum}"
        )
    if cfg.analysis is not None:
        raise InputError(f"{whose}; the interference analysis needs each one: set analysis None")
    common_weight(cfg.merge, len(cfg.tasks), cfg.link)


def common_weight(merge: MergeConfig, n_users: int, link: str = "aircomp") -> float:
    """The one weight ``alpha`` with which a merge linear in the models, with equal weights,
    adds the task vectors (``theta_0 + alpha sum_q tau_q``: task arithmetic's ``lambda``); an
    error for any other merge, which the sum alone cannot give."""
    weights = linear_weights(merge, n_users)
    if weights is None or not np.allclose(weights, weights[0], rtol=1e-12, atol=0.0):
        raise InputError(
            f"the {link} link delivers only the sum of the task vectors; merge method "
            f"{merge.method!r} needs each one. Use a merge linear in the models with equal "
            "weights, such as task-arithmetic"
        )
    return float(weights[0])


@dataclass
class Reception:
    """What the BS holds after the uplink: shared by every defense of the same channel use."""

    clean: list[TaskVector]
    received: list[tuple[int, TaskVector]]
    mse: NDArray[np.float64]
    error_mse: NDArray[np.float64]
    nonfinite_entries: int
    n_users: int
    aircomp: AirCompResult | None = None
    """The AirComp link's transceivers; then :attr:`received` holds one vector, the estimate
    of the sum, under user 0."""
    uplink: dict[str, float] = field(default_factory=dict)
    """The uplink's figures for the sum (:func:`uplink_figures`)."""
    link_stats: list[UserLinkStats] = field(default_factory=list)
    """The symbol link's per-user statistics (measured BER, symbol MSE); empty elsewhere."""
    accuracies: dict[tuple[str, str, str, str], float] = field(default_factory=dict)
    """Test accuracies measured on this reception's runs, by (split, precision, task, state
    digest): a defense that ends where another began (realignment that validation stopped at
    step 0) is not evaluated twice. A task's accuracy depends on the state and the precision
    alone, so a sweep may share one such dict across receptions of the same pool (the base
    model's floor, evaluated once per task, not once per subset)."""

    _cosine: NDArray[np.float64] | None = field(default=None, init=False, repr=False, compare=False)
    _merged: dict[str, dict[str, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def vectors(self) -> list[TaskVector]:
        """The received task vectors that enter the merge."""
        return [v for _, v in self.received]

    @property
    def cosine(self) -> NDArray[np.float64]:
        """Pairwise cosines of :attr:`vectors` (Figs. 3-4), computed once per reception."""
        if self._cosine is None:
            vectors = self.vectors
            self._cosine = cosine_matrix(vectors) if vectors else np.zeros((0, 0))
        return self._cosine

    def merged(self, base: dict[str, torch.Tensor], merge: MergeConfig) -> dict[str, torch.Tensor]:
        """Eq. 6 on :attr:`vectors` (the base itself when every user was dropped), merged once
        per reception and merge: every defense without a blind stage starts from it, and no
        run modifies it (a model loads a copy). A reception belongs to the pool it was received
        from: ``base`` is that pool's base state, not part of the cache's key."""
        key = merge.model_dump_json()
        if key not in self._merged:
            vectors = self.vectors
            self._merged[key] = (
                merge_task_vectors(base, vectors, self.merge_of(merge)) if vectors else dict(base)
            )
        return self._merged[key]

    def merge_of(self, merge: MergeConfig) -> MergeConfig:
        """The merge to apply to :attr:`vectors`: ``merge`` itself, or on the AirComp link task
        arithmetic with ``merge``'s common weight on the one received sum."""
        if self.aircomp is None:
            return merge
        alpha = common_weight(merge, self.n_users)
        return MergeConfig(method="task-arithmetic", scaling=alpha)


def reception_key(cfg: ExperimentConfig) -> str:
    """Identity of a run's channel use (everything but the defense and the analysis)."""
    return cfg.model_copy(
        update={"defense": "none", "realign": RealignConfig(), "analysis": None}
    ).model_dump_json()


def receive(pool: ModelPool, cfg: ExperimentConfig) -> Reception:
    """Users -> channel -> BS: draw the channel, send every task vector, apply the NaN policy."""
    _validate(pool, cfg)
    rng = np.random.default_rng([cfg.seed, 7])
    base = pool.base_state
    clean = clean_vectors(pool, cfg.tasks, base)
    sent = sent_vectors(pool, cfg.tasks, cfg.payload)
    mu, channel = channel_mse(cfg, rng, jammer_weights(clean))
    if LINKS[cfg.link].kind == "aircomp":
        air = transmit_sum(cfg, clean, channel, rng)
        assert channel is not None
        return reception_from(
            cfg, clean, [air.received], mu, aircomp=air, power=channel.realization.p
        )
    if sent is None:
        received, stats = transmit_link(cfg, clean, base, mu, channel, rng)
    else:
        on_air, stats = transmit_link(cfg, sent, zero_offsets(sent), mu, channel, rng)
        received = deltas_from_factors(pool, cfg.tasks, on_air, sent, clean)
    return reception_from(cfg, clean, received, mu, link_stats=stats)


def reception_from(
    cfg: ExperimentConfig,
    clean: list[TaskVector],
    received: list[NDArray[np.float32]],
    mu: NDArray[np.float64],
    *,
    aircomp: AirCompResult | None = None,
    power: NDArray[np.float64] | None = None,
    link_stats: list[UserLinkStats] | None = None,
) -> Reception:
    """What the BS holds given the flat vectors it ``received`` (after ``cfg.nan_policy``):
    the seam where a caller may bring received vectors of its own. With ``aircomp``,
    ``received`` is its one estimate of the sum and ``power`` the users' peak powers;
    ``link_stats``: the symbol link's per-user statistics."""
    keep, bad_total = _received_vectors(cfg, received, clean)
    target = None if LINKS[cfg.link].kind == "noiseless" else _sum_of(clean)
    targets: list[NDArray[np.floating]] = [c.flatten() for c in clean]
    if aircomp is not None and target is not None:
        targets = [target]
    error_mse = np.array(
        [float(np.nanmean((r - c) ** 2)) for r, c in zip(received, targets, strict=True)]
    )
    figures = uplink_figures(cfg, clean, received, mu, aircomp, power, target)
    if link_stats:
        figures["ber"] = float(np.mean([s.ber for s in link_stats]))
    return Reception(
        clean, keep, mu, error_mse, bad_total, len(clean), aircomp, figures, list(link_stats or [])
    )


def _sum_of(vectors: list[TaskVector] | list[NDArray[np.float32]]) -> NDArray[np.float64]:
    flats = [v.flatten() for v in vectors]
    total = np.zeros(flats[0].size, dtype=np.float64)
    for flat in flats:
        total += flat
    return total


def uplink_figures(
    cfg: ExperimentConfig,
    clean: list[TaskVector],
    received: list[NDArray[np.float32]],
    mu: NDArray[np.float64],
    aircomp: AirCompResult | None = None,
    power: NDArray[np.float64] | None = None,
    target: NDArray[np.float64] | None = None,
) -> dict[str, float]:
    """What the uplink did to the merge's sum ``sum_q tau_q`` (empty on the noiseless link):

        * ``nmse``: measured, ``|sum_hat - sum_q tau_q|^2 / |sum_q tau_q|^2`` (``sum_hat`` the sum
          of the received vectors, or AirComp's estimate);
        * ``sum_mse``: the closed form per entry the receiver's design promises, in the units of
          the received vectors: ``sum_q mu_q mean(s_q)`` for MMSE-SIC on an analog link (independent
          errors of variance ``mu_q s_q``, :func:`rmtllmf.channel.link.segment_scales`), AirComp's
          ``sum_q |g_q - w_q|^2 + m^H C m`` averaged over entries; absent on the symbol link, on
          the ``weights`` link (whose scale is that of ``theta_0 + tau_q``) and for factor payloads;
        * ``energy``: the users' mean transmit power over their peak (MMSE-SIC: 1, full power;
          AirComp: the mean of ``|b_q|^2 / p_q``);
    * ``ber``: on the symbol link, the users' mean measured bit error rate (added by
      :func:`reception_from`).

        ``target`` is ``sum_q tau_q`` when the caller has it already.
    """
    link = LINKS[cfg.link]
    if link.kind == "noiseless":
        return {}
    target = _sum_of(clean) if target is None else target
    error = _sum_of(received) - target
    norm = float(np.dot(target, target))
    figures = {"nmse": float(np.dot(error, error)) / norm if norm else 0.0}
    if aircomp is not None and power is not None:
        figures["sum_mse"] = aircomp.mse
        figures["energy"] = float(np.mean(aircomp.energy(power)))
        return figures
    figures["energy"] = 1.0
    if link.kind == "analog" and cfg.payload == "delta" and not link.on_weights:
        seg = clean[0].layout.segments
        figures["sum_mse"] = float(
            sum(mu[q] * _mean_scale(c.flatten(), seg, link) for q, c in enumerate(clean))
        )
    return figures


def _mean_scale(x: NDArray[np.float32], seg: NDArray[np.int64], link: Link) -> float:
    """The entry mean of an analog link's noise scale ``s`` for the sent vector ``x``."""
    assert link.scale is not None
    s = segment_scales(x, seg, link.scale, per_segment=link.per_segment)
    return float(np.dot(np.diff(seg), s) / max(int(seg[-1]), 1))


def noise_variances(
    cfg: ExperimentConfig, rx: Reception, base: dict[str, torch.Tensor]
) -> list[NDArray[np.float64]]:
    """The BS's estimate of each merged user's per-tensor noise variance on ``cfg.link``
    (:func:`rmtllmf.channel.noise_variance`): what it knows of the channel, no labels. On the
    AirComp link, the one received sum's: ``m^H C m`` of each tensor's transceiver, known
    exactly."""
    if rx.aircomp is not None:
        return [rx.aircomp.noise_power for _ in rx.received]
    link = LINKS[cfg.link]
    if link.kind == "symbol":
        raise InputError(
            "the receiver defenses need an analog link with a known noise law ("
            + ", ".join(n for n, lk in LINKS.items() if lk.kind != "symbol")
            + "), not the symbol link"
        )
    seg = rx.clean[0].layout.segments
    if link.scale is None:
        return [np.zeros(seg.size - 1) for _ in rx.received]
    offset = _weights_offset(base, rx.clean[0].layout) if link.on_weights else None
    return [
        noise_variance(
            tv.flatten(),
            float(rx.mse[q]),
            scale=link.scale,
            segments=seg,
            per_segment=link.per_segment,
            offset=offset,
        )
        for q, tv in rx.received
    ]


def _blind_vectors(
    cfg: ExperimentConfig, rx: Reception, base: dict[str, torch.Tensor]
) -> list[TaskVector]:
    """The received vectors after the defense's first stage (denoise, gate, robust aggregate)."""
    layout = rx.clean[0].layout
    flats = [tv.flatten() for tv in rx.vectors]
    noise = noise_variances(cfg, rx, base)
    out = blind_defense(flats, noise, layout, get_defense(cfg.defense))
    return [TaskVector.from_flat(f, layout) for f in out]


def _realign_sets(
    pool: ModelPool, cfg: ExperimentConfig
) -> tuple[list[FewShotSet], list[FewShotSet]]:
    """The BS's labelled data for realignment: ``k`` training examples per class of each task,
    and the first ``val_per_task`` validation examples when the kept state is validated."""
    if cfg.defense not in REALIGNING:
        return [], []
    k = cfg.realign.k_per_class
    sets = [
        few_shot_set(t, *pool.data[t]["train"], k, pool.n_classes(t), cfg.seed) for t in cfg.tasks
    ]
    if not cfg.realign.validate_every:
        return sets, []
    m = cfg.realign.val_per_task
    val_sets = [
        FewShotSet(t, pool.data[t]["val"][0][:m], pool.data[t]["val"][1][:m]) for t in cfg.tasks
    ]
    return sets, val_sets


@dataclass(frozen=True)
class Defended:
    """What the BS serves after a run's defense: the model's state and what realignment did."""

    state: dict[str, torch.Tensor]
    realign: RealignLog
    analysis: Analysis | None = None


def defend(pool: ModelPool, cfg: ExperimentConfig, rx: Reception) -> Defended:
    """The BS's side of a run on what it received: the defense's blind stage, the merge
    (eq. 6), the interference analysis where ``cfg.analysis`` asks for it, then the defense's
    model stages (freeze, realign) on ``pool``'s few-shot data."""
    base = pool.base_state
    if get_defense(cfg.defense).blind:
        defended = _blind_vectors(cfg, rx, base)
        merge = rx.merge_of(cfg.merge)
        merged = merge_task_vectors(base, defended, merge) if defended else dict(base)
    else:
        merged = rx.merged(base, cfg.merge)
    analysis = (
        interference_analysis(
            pool,
            cfg.tasks,
            rx.clean,
            rx.vectors,
            rx.error_mse,
            scaling=cfg.merge.scaling,
            cfg=cfg.analysis,
            seed=cfg.seed,
        )
        if cfg.analysis
        else None
    )
    model = pool.model_from_state(merged)
    sets, val_sets = _realign_sets(pool, cfg)
    torch.manual_seed(cfg.seed)
    with compute_precision(cfg.precision):
        log = apply_defense(
            cfg.defense,
            model,
            base,
            pool.embedding_names,
            pool.heads,
            sets,
            cfg.realign,
            preprocess=pool.preprocess,
            val_sets=val_sets,
        )
    return Defended(model.state_dict(), log, analysis)


def run_experiment(
    pool: ModelPool, cfg: ExperimentConfig, reception: Reception | None = None
) -> ExperimentResult:
    """Run ``cfg`` on the model pool and measure per-task and normalized accuracy (and, with
    ``cfg.analysis``, WDE and the hypothesis test of the undefended merge).

    ``reception`` (from :func:`receive` with a config of the same :func:`reception_key`) skips
    the channel: the sweep sends once and applies every defense to the same received vectors.
    """
    _validate(pool, cfg)
    rx = reception if reception is not None else receive(pool, cfg)
    defended = defend(pool, cfg, rx)
    analysis, log = defended.analysis, defended.realign
    state = defended.state
    where = (cfg.split, cfg.precision)
    digest = state_digest(state)
    missing = [t for t in cfg.tasks if (*where, t, digest) not in rx.accuracies]
    if missing:
        with compute_precision(cfg.precision):
            measured = pool.task_accuracy(state, missing, cfg.split)
        for task, value in measured.items():
            rx.accuracies[(*where, task, digest)] = value
    acc = {t: rx.accuracies[(*where, t, digest)] for t in cfg.tasks}
    ft = {t: pool.finetuned_accuracy(t, cfg.split) for t in cfg.tasks}
    kept = {q for q, _ in rx.received}
    if rx.aircomp is not None and rx.received:  # the one sum carries every user
        kept = set(range(rx.n_users))
    return ExperimentResult(
        config=cfg,
        mse=rx.mse,
        error_mse=rx.error_mse,
        accuracy=acc,
        normalized=normalized_accuracy(acc, ft),
        chance=normalized_accuracy({t: 1.0 / pool.n_classes(t) for t in cfg.tasks}, ft),
        received_cosine=rx.cosine.copy(),
        dropped_users=[q for q in range(rx.n_users) if q not in kept],
        nonfinite_entries=rx.nonfinite_entries,
        analysis=analysis,
        realign_curve=log.curve,
        realign_kept_step=log.kept_step,
        uplink=dict(rx.uplink),
    )
