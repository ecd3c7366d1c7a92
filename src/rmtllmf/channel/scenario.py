"""Scenarios: from a configuration and a seed to one channel realization ``(H, p, C_z)``.

A realization combines the geometry (:mod:`~rmtllmf.channel.geometry`), full transmit power for
every user (the inner maximisation of P1/P2, sec. II-C1) and the scenario's noise covariance
(:mod:`~rmtllmf.channel.jammer`):

* ``ideal``: thermal noise only;
* ``sum-rate``: thermal floor + worst-case jammer for the sum rate (P1);
* ``strongest-user``: thermal floor + worst-case jammer for the strongest user (P2);
* ``aircomp-maxmin``: thermal floor + the jammer that moves first against an AirComp base station
  that adapts (:func:`~rmtllmf.channel.aircomp_jammer.worst_case_aircomp_noise`);
* ``aircomp-aligned``: thermal floor + the jammer that answers a base station that moved first,
  all its power along the robust AirComp beamformer
  (:func:`~rmtllmf.channel.aircomp_jammer.bs_first_noise`).

The two AirComp jammers are built against the users' scales ``w_q`` (``weights``; default one
per user): the jammer is assumed to know them, as it knows ``H``. Every covariance applies to
either receiver: the table of :mod:`rmtllmf.report` sets MMSE-SIC against AirComp under each.

Jammer power is given either in dBm (``jammer_dbm``) or as a jammer-to-noise ratio ``jnr_db``,
defined against the total thermal power over the array, ``P_N = JNR * N_R * sigma^2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Self

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rmtllmf.channel.aircomp_jammer import bs_first_noise, worst_case_aircomp_noise
from rmtllmf.channel.geometry import (
    PathLossConfig,
    Placement,
    path_loss_db,
    place_users,
    rayleigh_fading,
)
from rmtllmf.channel.jammer import (
    ideal_noise,
    worst_case_strongest_user_noise,
    worst_case_sum_rate_noise,
)
from rmtllmf.channel.units import db_to_linear, dbm_to_watt, thermal_noise_power
from rmtllmf.errors import InputError

ScenarioName = Literal["ideal", "sum-rate", "strongest-user", "aircomp-maxmin", "aircomp-aligned"]
SCENARIOS: tuple[ScenarioName, ...] = (
    "ideal",
    "sum-rate",
    "strongest-user",
    "aircomp-maxmin",
    "aircomp-aligned",
)
#: Jammer-to-noise ratio used when neither ``jammer_dbm`` nor ``jnr_db`` is given.
DEFAULT_JNR_DB = 10.0
#: Largest magnitude of a power or ratio given in dB / dBm: 200 dBm is 1e17 W, far past any
#: radio, while the linear powers of +-200 dB stay finite through the MSE and rate formulas (a
#: value such as 1e9 dBm would overflow to an infinite power).
DB_LIMIT = 200.0


class ScenarioConfig(BaseModel):
    """Everything that defines the uplink of one experiment (frozen, validated)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    scenario: ScenarioName = "ideal"
    n_users: int = Field(8, ge=1)
    n_antennas: int = Field(16, ge=1)
    r_min_m: float = Field(100.0, gt=0)
    r_max_m: float = Field(1000.0, gt=0)
    placement: Placement = "uniform-distance"
    path_loss: PathLossConfig = PathLossConfig()
    tx_power_dbm: float = Field(
        -10.0,
        ge=-DB_LIMIT,
        le=DB_LIMIT,
        description="per-user power limit P_q; -10 dBm = 0.1 mW",
    )
    bandwidth_hz: float = Field(180e3, gt=0, allow_inf_nan=False)
    noise_figure_db: float = Field(5.0, ge=0, le=DB_LIMIT)
    jammer_dbm: float | None = Field(None, ge=-DB_LIMIT, le=DB_LIMIT)
    jnr_db: float | None = Field(
        None,
        ge=-DB_LIMIT,
        le=DB_LIMIT,
        description="jammer power over total thermal power N_R*sigma^2; default 10 dB",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.r_min_m > self.r_max_m:
            raise InputError(f"r_min_m={self.r_min_m} must not exceed r_max_m={self.r_max_m}")
        if self.jammer_dbm is not None and self.jnr_db is not None:
            raise InputError("give the jammer power as jammer_dbm or as jnr_db, not both")
        return self

    @property
    def thermal_power_w(self) -> float:
        """Thermal noise power per antenna ``sigma^2`` in watts."""
        return thermal_noise_power(self.bandwidth_hz, self.noise_figure_db)

    @property
    def jammer_power_w(self) -> float:
        """Jammer budget ``P_N = tr(C_jam)`` in watts (0 for the ideal scenario)."""
        if self.scenario == "ideal":
            return 0.0
        if self.jammer_dbm is not None:
            return float(dbm_to_watt(self.jammer_dbm))
        jnr = DEFAULT_JNR_DB if self.jnr_db is None else self.jnr_db
        return float(db_to_linear(jnr)) * self.n_antennas * self.thermal_power_w


@dataclass(frozen=True)
class LargeScale:
    """Per-seed geometry: user distances and path losses (fixed across fading blocks)."""

    distances_m: NDArray[np.float64]
    path_loss_db: NDArray[np.float64]


@dataclass(frozen=True)
class ChannelRealization:
    """One channel state: ``H`` (N_R, Q) with path loss, powers ``p`` and noise ``C_z`` (watts)."""

    H: NDArray[np.complex128]
    p: NDArray[np.float64]
    C_z: NDArray[np.complex128]
    thermal_power: float
    jammer_power: float
    large_scale: LargeScale


def noise_covariance(
    scenario: ScenarioName,
    H: NDArray[np.complex128],
    p: NDArray[np.float64],
    thermal_power: float,
    jammer_power: float,
    weights: NDArray[np.float64] | None = None,
) -> NDArray[np.complex128]:
    """Total noise covariance ``C_z`` of a scenario for the channel ``H``, powers ``p`` and,
    for the AirComp jammers, the users' scales ``weights`` (default: one each)."""
    w = np.ones(H.shape[1]) if weights is None else weights
    if scenario == "aircomp-maxmin":
        return worst_case_aircomp_noise(H, p, w, jammer_power, thermal_power).C
    if scenario == "aircomp-aligned":
        return bs_first_noise(H, p, w, jammer_power, thermal_power).C
    if scenario == "ideal":
        return ideal_noise(H.shape[0], thermal_power)
    if scenario == "sum-rate":
        return worst_case_sum_rate_noise(H, p, jammer_power, thermal_power)
    if scenario == "strongest-user":
        return worst_case_strongest_user_noise(H, p, jammer_power, thermal_power)
    raise InputError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")


def draw_large_scale(cfg: ScenarioConfig, rng: np.random.Generator) -> LargeScale:
    """Drop the users and draw their path losses."""
    d = place_users(rng, cfg.n_users, cfg.r_min_m, cfg.r_max_m, cfg.placement)
    return LargeScale(d, path_loss_db(d, cfg.path_loss, rng))


def realize(
    cfg: ScenarioConfig,
    large_scale: LargeScale,
    rng: np.random.Generator,
    weights: NDArray[np.float64] | None = None,
) -> ChannelRealization:
    """Draw fresh Rayleigh fading for a fixed geometry and build ``(H, p, C_z)`` (``weights``:
    the users' scales the AirComp jammers are built against)."""
    gain = np.sqrt(db_to_linear(-large_scale.path_loss_db))
    H = rayleigh_fading(rng, cfg.n_antennas, cfg.n_users) * gain[None, :]
    p = np.full(cfg.n_users, float(dbm_to_watt(cfg.tx_power_dbm)))
    sigma2, budget = cfg.thermal_power_w, cfg.jammer_power_w
    C_z = noise_covariance(cfg.scenario, H, p, sigma2, budget, weights)
    return ChannelRealization(H, p, C_z, sigma2, budget, large_scale)


def draw_realization(
    cfg: ScenarioConfig, rng: np.random.Generator, weights: NDArray[np.float64] | None = None
) -> ChannelRealization:
    """Geometry and fading in one go: the channel of one seed."""
    return realize(cfg, draw_large_scale(cfg, rng), rng, weights)
