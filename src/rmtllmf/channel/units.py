"""Unit conversions for link budgets. The API works in SI units (watts, metres, hertz); these
helpers convert to and from the decibel units people write down."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from rmtllmf.errors import InputError

#: Thermal noise power spectral density kT at T = 290 K, rounded as in link budgets [dBm/Hz].
THERMAL_NOISE_DBM_PER_HZ = -174.0


def db_to_linear(value_db: ArrayLike) -> NDArray[np.float64]:
    """Power ratio from decibels: ``10^(x/10)``."""
    return np.power(10.0, np.asarray(value_db, dtype=np.float64) / 10.0)


def linear_to_db(value: ArrayLike) -> NDArray[np.float64]:
    """Decibels from a power ratio: ``10 log10(x)`` (``-inf`` for 0)."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(np.asarray(value, dtype=np.float64))


def dbm_to_watt(value_dbm: ArrayLike) -> NDArray[np.float64]:
    """Watts from dBm: ``10^((x - 30)/10)``."""
    return db_to_linear(np.asarray(value_dbm, dtype=np.float64) - 30.0)


def watt_to_dbm(value_w: ArrayLike) -> NDArray[np.float64]:
    """dBm from watts: ``10 log10(x) + 30``."""
    return linear_to_db(value_w) + 30.0


def thermal_noise_power(bandwidth_hz: float, noise_figure_db: float = 0.0) -> float:
    """Receiver noise power per antenna in watts.

    ``N = -174 dBm/Hz + 10 log10(B) + NF`` (kT at 290 K over the bandwidth ``B``, degraded by the
    receiver noise figure ``NF``).
    """
    if not bandwidth_hz > 0:
        raise InputError(f"bandwidth_hz must be > 0 Hz, got {bandwidth_hz}")
    dbm = THERMAL_NOISE_DBM_PER_HZ + 10.0 * np.log10(bandwidth_hz) + noise_figure_db
    return float(dbm_to_watt(dbm))
