"""Noise covariances seen by the base station: ideal and the two worst-case jammers (sec. II-C).

All functions return the *total* noise covariance ``C_z = sigma^2 I + C_jam`` in watts, where
``sigma^2`` (``thermal_power``) is the receiver's thermal floor per antenna and the jammer spends
``tr(C_jam) = P_N`` (``jammer_power``). With ``thermal_power = 0`` they reduce to the paper's
noise-only formulation in which ``tr(C_z) <= P_N``.

* Ideal (sec. II-C1): users transmit at full power, no jammer: ``C_z = sigma^2 I``.
* Worst case for the sum rate (P1, eqs. 13-14): the jammer minimises
  ``log det(I + S C_z^{-1})`` with ``S = H P H^H``. ``C_jam`` shares the eigenvectors of ``S``
  (Hadamard/Fiedler); with eigenvalues ``upsilon_i`` of ``S`` the per-direction total noise
  ``x_i = sigma^2 + s_i`` follows reverse water-filling:
  ``x_i(nu) = (upsilon_i / 2) (sqrt(1 + 4/(upsilon_i nu)) - 1)`` (eq. 14, where the paper's
  ``P_i upsilon_i`` is our ``upsilon_i``: eigenvalues of ``H P H^H`` already carry the powers),
  ``s_i = max(0, x_i(nu) - sigma^2)`` and ``nu > 0`` solves ``sum_i s_i = P_N``.
* Worst case for the strongest user (P2, eq. 15): all jammer power on the strongest user's
  direction, ``C_jam = P_N h_Q h_Q^H / ||h_Q||^2``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from rmtllmf.channel.linalg import RANK_RTOL
from rmtllmf.channel.mac import sic_order
from rmtllmf.channel.validation import check_channel, check_nonnegative, check_powers
from rmtllmf.errors import InputError

#: Bisection stops when the bracket on ``log(nu)`` is this narrow (relative ``nu`` error ~1e-14).
_BISECTION_LOG_WIDTH = 1e-14
_BISECTION_MAX_STEPS = 400


def ideal_noise(n_rx: int, thermal_power: float) -> NDArray[np.complex128]:
    """Sec. II-C1 (ideal case): thermal noise only, ``C_z = sigma^2 I``."""
    if n_rx < 1:
        raise InputError(f"n_rx must be >= 1 receive antenna, got {n_rx}")
    sigma2 = check_nonnegative(thermal_power, "thermal_power")
    return sigma2 * np.eye(n_rx, dtype=np.complex128)


def waterfill_level(upsilon: NDArray[np.float64], nu: float) -> NDArray[np.float64]:
    """Eq. 14: total noise ``x_i(nu)`` per eigen-direction, in a cancellation-free form.

    With ``t = u nu``, ``x = (u/2)(sqrt(1 + 4/t) - 1)`` is evaluated as

    * ``x = 2 / (nu (1 + sqrt(1 + 4/t)))`` for ``t >= 1`` (high SNR, where the printed form
      subtracts two nearly equal numbers and loses every digit), and
    * ``x = sqrt(u/nu) (sqrt(1 + t/4) - sqrt(t)/2)`` for ``t < 1``, with ``sqrt(t)`` formed as
      ``sqrt(u) sqrt(nu)`` so that nothing underflows at extreme dynamic range.

    ``x = 0`` where ``u = 0`` (no signal, no jamming).
    """
    return _waterfill_level_log(np.asarray(upsilon, dtype=np.float64), float(np.log(nu)))


def _waterfill_level_log(u: NDArray[np.float64], log_nu: float) -> NDArray[np.float64]:
    """:func:`waterfill_level` from ``log(nu)``: ``sqrt(nu)`` stays a normal float even where
    ``nu`` itself would underflow (subnormal eigenvalues put ``nu`` below 1e-308) or overflow (a
    subnormal jammer budget puts it above 1e308)."""
    out = np.zeros_like(u)
    root_u, root_nu = np.sqrt(u), float(np.exp(0.5 * log_nu))
    signal = u > 0
    root_t = np.zeros_like(u)  # t = 0 where u = 0, also where nu overflows to inf (0 * inf)
    root_t[signal] = root_u[signal] * root_nu
    high = root_t >= 1.0
    low = signal & ~high
    # 2 / (nu (1 + sqrt(1 + 4/t))) with neither nu nor t formed: both overflow for a subnormal P_N
    four_over_t = (2.0 / root_t[high]) ** 2
    out[high] = (2.0 / root_nu) / root_nu / (1.0 + np.sqrt(1.0 + four_over_t))
    out[low] = (root_u[low] / root_nu) * (np.sqrt(1.0 + root_t[low] ** 2 / 4.0) - root_t[low] / 2.0)
    return out


def reverse_waterfill(
    upsilon: ArrayLike, jammer_power: float, thermal_power: float = 0.0
) -> tuple[NDArray[np.float64], float]:
    """Eqs. 13-14 on the eigenvalues: jammer eigenvalues ``s_i >= 0`` minimising
    ``sum_i log(1 + u_i/(sigma^2 + s_i))`` subject to ``sum_i s_i = P_N``; returns ``(s, nu)``.

    The objective is convex in ``s`` and its KKT conditions give ``x_i = sigma^2 + s_i`` with
    ``x_i (x_i + u_i) = u_i / nu`` wherever ``s_i > 0`` (:func:`waterfill_level`). The jammed
    power ``f(nu) = sum_i max(0, x_i(nu) - sigma^2)`` is continuous and non-increasing in ``nu``;
    it is bracketed by:

    * ``nu_hi = r / P_N`` (``r`` directions with ``u_i > 0``): ``x_i <= 1/nu`` gives ``f <= P_N``;
    * ``nu_lo = u_max / (P_N + sigma^2 + u_max/2)^2``: ``x >= sqrt(u/nu) - u/2`` gives
      ``f(nu_lo) >= P_N``;

    and ``nu`` is found by bisection on ``log(nu)`` to relative precision ~1e-14.
    """
    u = np.clip(np.asarray(upsilon, dtype=np.float64), 0.0, None)
    if u.ndim != 1:
        raise InputError(f"upsilon must be a 1-D array of eigenvalues, got shape {u.shape}")
    if not np.all(np.isfinite(u)):
        raise InputError("upsilon contains NaN or Inf; eigenvalues of H P H^H must be finite")
    budget = check_nonnegative(jammer_power, "jammer_power")
    sigma2 = check_nonnegative(thermal_power, "thermal_power")
    u = np.where(u > RANK_RTOL * (u.max(initial=0.0)), u, 0.0)
    rank = int(np.count_nonzero(u))
    if budget == 0.0 or rank == 0:
        # No budget, or no signal to jam: the caller decides where the (irrelevant) power goes.
        return np.zeros_like(u), float("inf")

    def jammed(log_nu: float) -> float:
        return float(np.sum(np.clip(_waterfill_level_log(u, log_nu) - sigma2, 0.0, None)))

    u_max = float(u.max())
    # the bracket in the log domain: u_max / (...)^2 underflows for subnormal eigenvalues
    log_lo = float(np.log(u_max) - 2.0 * np.log(budget + sigma2 + 0.5 * u_max))
    log_hi = float(np.log(rank) - np.log(budget))  # rank / budget overflows for subnormal P_N
    for _ in range(_BISECTION_MAX_STEPS):
        if log_hi - log_lo <= _BISECTION_LOG_WIDTH:
            break
        mid = 0.5 * (log_lo + log_hi)
        if jammed(mid) > budget:
            log_lo = mid
        else:
            log_hi = mid
    log_nu = 0.5 * (log_lo + log_hi)
    with np.errstate(over="ignore"):  # nu exceeds the float range for a subnormal P_N: inf
        nu = float(np.exp(log_nu))
    s = np.clip(_waterfill_level_log(u, log_nu) - sigma2, 0.0, None)
    total = float(s.sum())
    if total > 0:
        s *= budget / total  # remove the last ~1e-14 of bisection error so tr(C_jam) = P_N exactly
    return s, nu


def worst_case_sum_rate_noise(
    H: ArrayLike, p: ArrayLike, jammer_power: float, thermal_power: float = 0.0
) -> NDArray[np.complex128]:
    """P1, eqs. 13-14: worst-case noise covariance for the sum rate, with a thermal floor.

    ``C_z = sigma^2 I + U diag(s) U^H``, ``U`` the eigenvectors of ``H P H^H`` and ``s`` from
    :func:`reverse_waterfill`, so that ``tr(C_z - sigma^2 I) = P_N``. If ``H P H^H = 0`` the jammer
    cannot lower a zero rate and its power is spread evenly over the antennas.
    """
    Hc = check_channel(H)
    pw = check_powers(p, Hc.shape[1])
    budget = check_nonnegative(jammer_power, "jammer_power")
    sigma2 = check_nonnegative(thermal_power, "thermal_power")
    n_rx = Hc.shape[0]
    G = Hc * np.sqrt(pw)[None, :]
    upsilon, U = np.linalg.eigh(G @ G.conj().T)
    s, _ = reverse_waterfill(upsilon, budget, sigma2)
    if budget > 0 and not np.any(s > 0):
        s = np.full(n_rx, budget / n_rx)
    C_jam = (U * s[None, :]) @ U.conj().T
    C = sigma2 * np.eye(n_rx, dtype=np.complex128) + C_jam
    result: NDArray[np.complex128] = 0.5 * (C + C.conj().T)
    return result


def worst_case_strongest_user_noise(
    H: ArrayLike, p: ArrayLike, jammer_power: float, thermal_power: float = 0.0
) -> NDArray[np.complex128]:
    """P2, eq. 15: worst-case noise covariance for the strongest user, with a thermal floor.

    ``C_z = sigma^2 I + P_N h_Q h_Q^H / ||h_Q||^2`` where ``Q`` is last in the SIC order (largest
    ``p_q ||h_q||^2``). Then ``R_Q = log(1 + p_Q ||h_Q||^2 / (sigma^2 + P_N))``, the minimum over
    all jammers with ``tr(C_jam) <= P_N`` (Cauchy-Schwarz). Without a floor the covariance has
    rank one and every other user gets an infinite SINR: a degenerate configuration.
    """
    Hc = check_channel(H)
    pw = check_powers(p, Hc.shape[1])
    budget = check_nonnegative(jammer_power, "jammer_power")
    sigma2 = check_nonnegative(thermal_power, "thermal_power")
    n_rx = Hc.shape[0]
    h = Hc[:, sic_order(Hc, pw)[-1]]
    norm2 = float(np.real(np.vdot(h, h)))
    if norm2 == 0.0:
        raise InputError("every user's channel is zero; the strongest user has no direction to jam")
    C = sigma2 * np.eye(n_rx, dtype=np.complex128) + budget * np.outer(h, h.conj()) / norm2
    result: NDArray[np.complex128] = 0.5 * (C + C.conj().T)
    return result
