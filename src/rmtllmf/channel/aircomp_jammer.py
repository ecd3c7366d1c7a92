"""Jammers against AirComp (:mod:`rmtllmf.channel.aircomp`), each with its order of play.

The noise is ``C = sigma^2 I + C_jam`` with ``C_jam >= 0``, ``tr(C_jam) = P_N``, as for the
jammers against MMSE-SIC (:mod:`rmtllmf.channel.jammer`, whose P1 and P2 covariances also apply
here unchanged). The AirComp MSE is affine in ``C`` for a fixed transceiver:
``MSE(m, b; C) = sum_q |g_q - w_q|^2 + m^H C m``.

* **Jammer first** (:func:`worst_case_aircomp_noise`, the analogue of P1): the jammer commits to
  ``C_jam``, the base station sees it and adapts ``(m, b)``. The jammer maximises
  ``phi(C_jam) = min_{m,b} MSE(m, b; sigma^2 I + C_jam)``, a minimum of affine functions of
  ``C_jam`` and hence concave. Its supergradient at ``C_jam`` is ``m* m*^H`` with ``m*`` the
  adapted beamformer (Danskin), and the constraint set is projected onto exactly by projecting
  the eigenvalues onto the simplex of total ``P_N`` (:func:`project_to_budget`): projected
  supergradient ascent with steps ``~ 1/sqrt(k)``, keeping the best iterate. It starts from the
  best of P1, P2, the uniform covariance and the base-station-first one, so its value is never
  below theirs. ``phi`` is evaluated with the alternating MMSE design, a local minimiser in
  ``b``.
* **Base station first** (:func:`bs_first_noise`): the base station commits to ``(m, b)`` and the
  jammer answers. Against a fixed ``m`` the jammer's best is to put all its power along ``m``,
  ``C_jam = P_N m m^H / |m|^2``, adding ``P_N |m|^2``; anticipating it, the base station
  minimises ``sum_q |g_q - w_q|^2 + (sigma^2 + P_N) |m|^2``, the MMSE design against white noise
  of power ``sigma^2 + P_N``. That value bounds the MSE whatever the jammer does. With ``b``
  fixed the pair is a saddle point: the MMSE beamformer against the aligned covariance is ``m``
  itself (``(G G^H + sigma^2 I + P_N u u^H) m = G G^H m + (sigma^2 + P_N) m = G w`` for
  ``u = m / |m|``), so by the minimax theorem the jammer-first value equals this bound when ``b``
  is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from rmtllmf.channel.aircomp import AirCompDesign, design_mmse
from rmtllmf.channel.jammer import worst_case_strongest_user_noise, worst_case_sum_rate_noise
from rmtllmf.channel.validation import check_channel, check_nonnegative, check_powers
from rmtllmf.errors import InputError

#: Ascent steps of the jammer-first search and its first step (a fraction of P_N).
JAMMER_STEPS = 60
JAMMER_STEP0 = 0.5


@dataclass(frozen=True)
class AirCompJamming:
    """A jammer's covariance against AirComp and what the base station's design makes of it."""

    C: NDArray[np.complex128]
    """The total noise covariance ``sigma^2 I + C_jam``."""
    value: float
    """The MSE of the base station's design against ``C`` (jammer first: ``phi(C_jam)``;
    base station first: the guaranteed bound)."""
    design: AirCompDesign
    trace: tuple[float, ...] = ()
    """Best value after each ascent step (jammer first)."""


def simplex_projection(v: ArrayLike, total: float) -> NDArray[np.float64]:
    """Euclidean projection of ``v`` onto ``{x >= 0, sum x = total}`` (sort and threshold)."""
    x = np.asarray(v, dtype=np.float64)
    if total <= 0:
        return np.zeros_like(x)
    u = np.sort(x)[::-1]
    cumulative = np.cumsum(u) - total
    index = np.arange(1, x.size + 1)
    rho = int(np.nonzero(u - cumulative / index > 0)[0][-1])
    theta = cumulative[rho] / (rho + 1.0)
    result: NDArray[np.float64] = np.clip(x - theta, 0.0, None)
    return result


def project_to_budget(X: NDArray[np.complex128], total: float) -> NDArray[np.complex128]:
    """The nearest (Frobenius) Hermitian ``Y >= 0`` with ``tr(Y) = total``: the eigenvalues of
    ``X``'s Hermitian part projected onto the simplex, the eigenvectors kept."""
    vals, vecs = np.linalg.eigh(0.5 * (X + X.conj().T))
    lam = simplex_projection(vals, total)
    result: NDArray[np.complex128] = (vecs * lam[None, :]) @ vecs.conj().T
    return result


def _inputs(
    H: ArrayLike, p: ArrayLike, w: ArrayLike, jammer_power: float, thermal_power: float
) -> tuple[NDArray[np.complex128], NDArray[np.float64], NDArray[np.float64], float, float]:
    Hc = check_channel(H)
    pw = check_powers(p, Hc.shape[1])
    weights = np.atleast_1d(np.asarray(w, dtype=np.float64))
    if weights.shape != (Hc.shape[1],) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise InputError(f"w must hold one finite scale >= 0 per user, shape ({Hc.shape[1]},)")
    budget = check_nonnegative(jammer_power, "jammer_power")
    sigma2 = check_nonnegative(thermal_power, "thermal_power")
    return Hc, pw, weights, budget, sigma2


def bs_first_noise(
    H: ArrayLike, p: ArrayLike, w: ArrayLike, jammer_power: float, thermal_power: float = 0.0
) -> AirCompJamming:
    """The base station moves first (module docs): its robust design against white noise of
    power ``sigma^2 + P_N``, and the jammer's answer ``sigma^2 I + P_N u u^H``, ``u = m / |m|``.
    ``value`` is the bound ``sum_q |g_q - w_q|^2 + (sigma^2 + P_N) |m|^2``."""
    Hc, pw, weights, budget, sigma2 = _inputs(H, p, w, jammer_power, thermal_power)
    n_rx = Hc.shape[0]
    white = (sigma2 + budget) * np.eye(n_rx, dtype=np.complex128)
    robust = design_mmse(Hc, pw, white, weights)
    norm = float(np.linalg.norm(robust.m))
    if norm > 0:
        u = robust.m / norm
        jam = budget * np.outer(u, u.conj())
    else:
        jam = budget / n_rx * np.eye(n_rx, dtype=np.complex128)
    C = sigma2 * np.eye(n_rx, dtype=np.complex128) + jam
    return AirCompJamming(0.5 * (C + C.conj().T), robust.mse, robust)


def worst_case_aircomp_noise(
    H: ArrayLike,
    p: ArrayLike,
    w: ArrayLike,
    jammer_power: float,
    thermal_power: float = 0.0,
    *,
    steps: int = JAMMER_STEPS,
) -> AirCompJamming:
    """The jammer moves first (module docs): projected supergradient ascent on
    ``phi(C_jam) = min_{m,b} MSE`` over ``tr(C_jam) = P_N``, from the best of P1, P2, uniform
    and the base-station-first covariance; returns the best covariance found."""
    Hc, pw, weights, budget, sigma2 = _inputs(H, p, w, jammer_power, thermal_power)
    n_rx = Hc.shape[0]
    floor = sigma2 * np.eye(n_rx, dtype=np.complex128)

    def adapted(jam: NDArray[np.complex128]) -> AirCompDesign:
        return design_mmse(Hc, pw, floor + jam, weights)

    starts = [budget / n_rx * np.eye(n_rx, dtype=np.complex128)]
    if budget > 0 and np.any(pw * np.sum(np.abs(Hc) ** 2, axis=0) > 0):
        starts += [
            worst_case_sum_rate_noise(Hc, pw, budget, 0.0),
            worst_case_strongest_user_noise(Hc, pw, budget, 0.0),
            bs_first_noise(Hc, pw, weights, budget, 0.0).C,
        ]
    scored = [(adapted(s), s) for s in starts]
    best_design, best = max(scored, key=lambda pair: pair[0].mse)
    jam, current = best, best_design
    trace = [best_design.mse]
    for k in range(steps if budget > 0 else 0):
        m = current.m
        norm2 = float(np.real(np.vdot(m, m)))
        if norm2 == 0:
            break
        step = JAMMER_STEP0 * budget / (norm2 * np.sqrt(k + 1.0))
        jam = project_to_budget(jam + step * np.outer(m, m.conj()), budget)
        current = adapted(jam)
        if current.mse > best_design.mse:
            best_design, best = current, jam
        trace.append(best_design.mse)
    C = floor + best
    return AirCompJamming(0.5 * (C + C.conj().T), best_design.mse, best_design, tuple(trace))
