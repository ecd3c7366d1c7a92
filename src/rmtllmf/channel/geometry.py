"""Geometry and large-scale link budget: user placement, path loss, Rayleigh fading.

* Users are dropped at distances ``d in [r_min, r_max]`` from the BS, uniform in distance (the
  paper's "randomly between 100 and 1000 m") or uniform over the annulus area.
* Path loss ``PL(d)`` in dB from one of:

  - ``log-distance``: ``PL = PL_0 + 10 n log10(d / d_0)``; ``PL_0`` defaults to free space at
    ``d_0``, ``20 log10(4 pi d_0 f_c / c)``;
  - ``3gpp-umi`` / ``3gpp-uma``: 3GPP TR 38.901 Table 7.4.1-1 (UMi street canyon, UMa) with LOS,
    NLOS or the LOS probability of Table 7.4.2-1 (``mixed``), optional log-normal shadowing.

* Small-scale fading: i.i.d. Rayleigh, ``h ~ CN(0, I)`` per user, scaled by ``sqrt(10^(-PL/10))``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field

from rmtllmf.errors import InputError

SPEED_OF_LIGHT = 299_792_458.0

Placement = Literal["uniform-distance", "uniform-area"]
PathLossModel = Literal["log-distance", "3gpp-umi", "3gpp-uma"]
Condition = Literal["los", "nlos", "mixed"]

#: (BS height, shadow-fading std LOS, shadow-fading std NLOS) of TR 38.901 Table 7.4.1-1.
_3GPP = {"3gpp-umi": (10.0, 4.0, 7.82), "3gpp-uma": (25.0, 4.0, 6.0)}


class PathLossConfig(BaseModel):
    """Parameters of the path-loss model (frozen; SI units except dB quantities)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: PathLossModel = "log-distance"
    carrier_hz: float = Field(3.5e9, gt=0)
    exponent: float = Field(2.0, gt=0, description="log-distance exponent n")
    reference_distance_m: float = Field(1.0, gt=0)
    reference_loss_db: float | None = Field(
        None, description="PL_0 at d_0; None = free-space loss at d_0"
    )
    condition: Condition = "nlos"
    bs_height_m: float | None = Field(None, gt=0, description="None = 38.901 default (10/25 m)")
    ut_height_m: float = Field(1.5, gt=0)
    shadowing: bool = False


def place_users(
    rng: np.random.Generator,
    n_users: int,
    r_min: float = 100.0,
    r_max: float = 1000.0,
    placement: Placement = "uniform-distance",
) -> NDArray[np.float64]:
    """Distances in metres of ``n_users`` users dropped around the BS.

    ``uniform-distance``: ``d ~ U[r_min, r_max]``; ``uniform-area``: uniform over the annulus,
    ``d = sqrt(U[r_min^2, r_max^2])``.
    """
    if n_users < 1:
        raise InputError(f"n_users must be >= 1, got {n_users}")
    if not 0 < r_min <= r_max:
        raise InputError(f"need 0 < r_min <= r_max metres, got r_min={r_min}, r_max={r_max}")
    if placement == "uniform-distance":
        return rng.uniform(r_min, r_max, size=n_users)
    if placement == "uniform-area":
        return np.sqrt(rng.uniform(r_min**2, r_max**2, size=n_users))
    raise InputError(f"unknown placement {placement!r}; use 'uniform-distance' or 'uniform-area'")


def free_space_loss_db(distance_m: ArrayLike, carrier_hz: float) -> NDArray[np.float64]:
    """Friis free-space loss ``20 log10(4 pi d f_c / c)`` in dB."""
    d = np.asarray(distance_m, dtype=np.float64)
    return 20.0 * np.log10(4.0 * np.pi * d * carrier_hz / SPEED_OF_LIGHT)


def _los_probability(d2d: NDArray[np.float64], model: str) -> NDArray[np.float64]:
    """TR 38.901 Table 7.4.2-1 (UMa for UT heights <= 13 m)."""
    scale = 36.0 if model == "3gpp-umi" else 63.0
    prob = 18.0 / d2d + np.exp(-d2d / scale) * (1.0 - 18.0 / d2d)
    return np.where(d2d <= 18.0, 1.0, prob)


def _3gpp_loss_db(
    d2d: NDArray[np.float64], cfg: PathLossConfig, los: NDArray[np.bool_]
) -> NDArray[np.float64]:
    """TR 38.901 Table 7.4.1-1 path loss (fc in GHz, distances in m)."""
    h_bs = cfg.bs_height_m or _3GPP[cfg.model][0]
    h_ut = cfg.ut_height_m
    fc = cfg.carrier_hz / 1e9
    d3d = np.sqrt(d2d**2 + (h_bs - h_ut) ** 2)
    d_bp = 4.0 * (h_bs - 1.0) * (h_ut - 1.0) * cfg.carrier_hz / SPEED_OF_LIGHT
    if cfg.model == "3gpp-umi":
        pl1 = 32.4 + 21.0 * np.log10(d3d) + 20.0 * np.log10(fc)
        pl2 = (
            32.4
            + 40.0 * np.log10(d3d)
            + 20.0 * np.log10(fc)
            - 9.5 * np.log10(d_bp**2 + (h_bs - h_ut) ** 2)
        )
        nlos = 35.3 * np.log10(d3d) + 22.4 + 21.3 * np.log10(fc) - 0.3 * (h_ut - 1.5)
    else:
        pl1 = 28.0 + 22.0 * np.log10(d3d) + 20.0 * np.log10(fc)
        pl2 = (
            28.0
            + 40.0 * np.log10(d3d)
            + 20.0 * np.log10(fc)
            - 9.0 * np.log10(d_bp**2 + (h_bs - h_ut) ** 2)
        )
        nlos = 13.54 + 39.08 * np.log10(d3d) + 20.0 * np.log10(fc) - 0.6 * (h_ut - 1.5)
    pl_los = np.where(d2d <= d_bp, pl1, pl2)
    return np.asarray(np.where(los, pl_los, np.maximum(pl_los, nlos)), dtype=np.float64)


def path_loss_db(
    distance_m: ArrayLike, cfg: PathLossConfig, rng: np.random.Generator | None = None
) -> NDArray[np.float64]:
    """Path loss in dB at the given 2-D distances.

    ``rng`` is needed for the random parts (``mixed`` LOS state, shadowing) and ignored otherwise.
    """
    d = np.asarray(distance_m, dtype=np.float64)
    if np.any(~np.isfinite(d)) or np.any(d <= 0):
        raise InputError("distance_m must be finite and > 0 metres")
    if cfg.model == "log-distance":
        pl0 = (
            cfg.reference_loss_db
            if cfg.reference_loss_db is not None
            else float(free_space_loss_db(cfg.reference_distance_m, cfg.carrier_hz))
        )
        return pl0 + 10.0 * cfg.exponent * np.log10(d / cfg.reference_distance_m)
    needs_rng = cfg.condition == "mixed" or cfg.shadowing
    if needs_rng and rng is None:
        raise InputError("a random generator is required for 'mixed' LOS state or shadowing")
    if cfg.condition == "mixed":
        assert rng is not None
        los = rng.random(d.shape) < _los_probability(d, cfg.model)
    else:
        los = np.full(d.shape, cfg.condition == "los")
    loss = _3gpp_loss_db(d, cfg, los)
    if cfg.shadowing:
        assert rng is not None
        _, sf_los, sf_nlos = _3GPP[cfg.model]
        loss = loss + rng.standard_normal(d.shape) * np.where(los, sf_los, sf_nlos)
    return loss


def rayleigh_fading(rng: np.random.Generator, n_rx: int, n_users: int) -> NDArray[np.complex128]:
    """i.i.d. Rayleigh small-scale fading: entries ``CN(0, 1)``, shape ``(n_rx, n_users)``."""
    if n_rx < 1 or n_users < 1:
        raise InputError(f"need n_rx >= 1 and n_users >= 1, got {n_rx}, {n_users}")
    re = rng.standard_normal((n_rx, n_users))
    im = rng.standard_normal((n_rx, n_users))
    return np.asarray((re + 1j * im) / np.sqrt(2.0), dtype=np.complex128)
