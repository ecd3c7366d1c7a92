"""Over-the-air computation (AirComp) of the merge's sum: one receive beamformer for all users.

Task arithmetic needs only ``sum_q tau_q``. With AirComp every user ``q`` sends its normalised
symbols ``x_q = tau_q / w_q`` (``w_q`` its scale, so ``x_q`` has the unit energy the MSE
formulas assume) at once, pre-scaled by a complex ``b_q`` with ``|b_q|^2 <= p_q``; the base
station applies one beamformer ``m`` to ``y = sum_q h_q b_q x_q + z``, ``z ~ CN(0, C)``, and
reads the target ``f = sum_q w_q x_q = sum_q tau_q`` directly (Zhu & Huang, arXiv:1803.11129;
Yang, Jiang, Shi & Ding, arXiv:1812.11750):

``f_hat = m^H y = sum_q g_q x_q + m^H z``, ``g_q = m^H h_q b_q``,

with mean square error per unit-energy symbol

``MSE(m, b) = sum_q |g_q - w_q|^2 + m^H C m``.

**What the base station must know:** ``H``, ``C`` (as for MMSE-SIC), each user's power limit
``p_q`` and scale ``w_q``; each user must be told its ``b_q`` (fed back). Nothing else.

**Designs.**

* ``mmse`` (:func:`design_mmse`): alternating minimisation. For fixed ``m`` the terms separate
  and the best ``b_q`` inverts the channel up to the power limit (truncated inversion,
  :func:`inversion_scalings`); for fixed ``b`` the best beamformer is
  ``m = (G G^H + C)^-1 G w`` with ``G = [h_q b_q]`` (:func:`receive_beamformer`). Each step is an
  exact block minimisation, so the MSE never rises (:func:`alternate`). Substituting the best
  ``b`` leaves a function of ``m`` alone (:func:`reduced_mse`); where the SNR is high the
  alternation crawls along its valley for thousands of rounds, so each start is first taken to
  a local minimum of it by L-BFGS and the alternation then polishes the result.
* ``zf`` (:func:`design_zf`): unbiased, ``g_q = w_q`` for every user. Along a direction ``a`` the
  smallest receive gain that lets every user invert its channel is
  ``t = max_q w_q / (sqrt(p_q) |a^H h_q|)``, with MSE ``t^2 a^H C a``; in whitened coordinates
  ``v = C^(1/2) a`` the best direction maximises ``min_q p_q |v^H C^(-1/2) h_q|^2 / w_q^2``, the
  max-min-fair multicast beamforming problem (NP-hard in general). We take the best of the
  directions of the full-power and the MMSE beamformers and the principal eigenvectors of
  ``sum_q lambda_q h~_q h~_q^H`` along a multiplicative re-weighting of ``lambda`` toward the
  worst user (a Lagrangian heuristic).

**Real entries on a complex channel.** Two real entries share one channel use,
``s = (x_2i + j x_2i+1) / sqrt(2)`` (unit energy), and are read back as ``sqrt(2) Re``,
``sqrt(2) Im`` of the estimate: each real entry then sees error variance ``MSE`` exactly, the
convention under which :func:`~rmtllmf.channel.mac.user_mse` is the noise variance of the
statistical link (:mod:`rmtllmf.channel.link`). AirComp and MMSE-SIC use the same number of
channel uses: every user sends its ``D`` entries in ``ceil(D / 2)`` uses, all users at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize

from rmtllmf.channel.validation import check_channel, check_covariance, check_powers
from rmtllmf.errors import InputError

DesignName = Literal["mmse", "zf"]
DESIGNS: tuple[DesignName, ...] = ("mmse", "zf")
#: The alternation stops when one round lowers the MSE by less than this fraction.
DEFAULT_TOL = 1e-10
DEFAULT_MAX_ITER = 5000
#: Re-weighting steps of the zero-forcing direction search.
ZF_STEPS = 200


@dataclass(frozen=True)
class AirCompDesign:
    """One AirComp transceiver: beamformer ``m``, users' scalings ``b`` and what they give."""

    m: NDArray[np.complex128]
    b: NDArray[np.complex128]
    w: NDArray[np.float64]
    gains: NDArray[np.complex128]
    """``g_q = m^H h_q b_q``: how much of user ``q``'s symbol reaches the estimate."""
    noise_power: float
    """``m^H C m``: the noise's variance in the estimate."""
    design: DesignName
    trace: tuple[float, ...] = ()
    """MSE after each iteration of the alternating design (non-increasing)."""

    @property
    def bias(self) -> float:
        """``sum_q |g_q - w_q|^2``: the misalignment part of the MSE."""
        return float(np.sum(np.abs(self.gains - self.w) ** 2))

    @property
    def mse(self) -> float:
        """The closed form ``sum_q |g_q - w_q|^2 + m^H C m`` per unit-energy symbol."""
        return self.bias + self.noise_power

    @property
    def energy(self) -> NDArray[np.float64]:
        """Transmit energy per channel use of each user, ``|b_q|^2`` (at most ``p_q``)."""
        return np.abs(self.b) ** 2


def _checked(
    H: ArrayLike, p: ArrayLike, C: ArrayLike, w: ArrayLike
) -> tuple[
    NDArray[np.complex128], NDArray[np.float64], NDArray[np.complex128], NDArray[np.float64]
]:
    Hc = check_channel(H)
    pw = check_powers(p, Hc.shape[1])
    Cc = check_covariance(C, Hc.shape[0])
    weights = np.atleast_1d(np.asarray(w, dtype=np.float64))
    if weights.shape != (Hc.shape[1],):
        raise InputError(
            f"w must hold one scale per user, shape ({Hc.shape[1]},); got {weights.shape}"
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise InputError("w must be finite and >= 0: each user's scale (rms of its vector)")
    return Hc, pw, Cc, weights


def aircomp_mse(H: ArrayLike, b: ArrayLike, m: ArrayLike, C: ArrayLike, w: ArrayLike) -> float:
    """``sum_q |m^H h_q b_q - w_q|^2 + m^H C m``: the MSE of ``(m, b)`` per unit-energy symbol."""
    Hc = np.asarray(H, dtype=np.complex128)
    mc = np.asarray(m, dtype=np.complex128)
    g = (mc.conj() @ Hc) * np.asarray(b, dtype=np.complex128)
    noise = float(np.real(mc.conj() @ np.asarray(C, dtype=np.complex128) @ mc))
    return float(np.sum(np.abs(g - np.asarray(w, dtype=np.float64)) ** 2)) + noise


def receive_beamformer(
    H: NDArray[np.complex128],
    b: NDArray[np.complex128],
    C: NDArray[np.complex128],
    w: NDArray[np.float64],
) -> NDArray[np.complex128]:
    """For fixed scalings, the MSE-minimising beamformer ``m = (G G^H + C)^+ G w``,
    ``G = [h_q b_q]``: the MSE is ``m^H (G G^H + C) m - 2 Re(m^H G w) + |w|^2``, a convex
    quadratic whose stationary point this is (``G w`` lies in the range of ``G G^H + C``, so the
    pseudo-inverse is exact when ``C`` is singular)."""
    G = H * b[None, :]
    A = G @ G.conj().T + C
    result: NDArray[np.complex128] = np.linalg.pinv(0.5 * (A + A.conj().T), hermitian=True) @ (
        G @ w.astype(np.complex128)
    )
    return result


def inversion_scalings(
    H: NDArray[np.complex128],
    m: NDArray[np.complex128],
    p: NDArray[np.float64],
    w: NDArray[np.float64],
) -> NDArray[np.complex128]:
    """For a fixed beamformer, each user's MSE-minimising scaling: truncated channel inversion.

    With ``a_q = m^H h_q`` the term ``|a_q b_q - w_q|^2`` over ``|b_q| <= sqrt(p_q)`` is smallest
    at ``b_q = min(sqrt(p_q), w_q / |a_q|) conj(a_q) / |a_q|``: the inversion ``w_q / a_q`` when
    the power allows, else full power with the phase aligned. ``b_q = 0`` where ``a_q = 0``
    (nothing the user sends reaches the estimate)."""
    a = m.conj() @ H
    mag = np.abs(a)
    out = np.zeros(a.shape, dtype=np.complex128)
    ok = mag > 0
    amp = np.minimum(np.sqrt(p[ok]), w[ok] / mag[ok])
    out[ok] = amp * a[ok].conj() / mag[ok]
    return out


def _design(
    H: NDArray[np.complex128],
    b: NDArray[np.complex128],
    m: NDArray[np.complex128],
    C: NDArray[np.complex128],
    w: NDArray[np.float64],
    kind: DesignName,
    trace: tuple[float, ...] = (),
) -> AirCompDesign:
    g = (m.conj() @ H) * b
    noise = float(np.real(m.conj() @ C @ m))
    return AirCompDesign(m, b, w, g, noise, kind, trace)


def alternate(
    H: ArrayLike,
    p: ArrayLike,
    C: ArrayLike,
    w: ArrayLike,
    b: ArrayLike,
    *,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
) -> AirCompDesign:
    """The alternating MMSE design from the scalings ``b``: beamformer for fixed ``b``
    (:func:`receive_beamformer`), then scalings for fixed ``m`` (:func:`inversion_scalings`),
    until one round lowers the MSE by less than ``tol`` relatively. Both steps are exact block
    minimisations, so the MSE in ``trace`` never rises (a round that would raise it by
    round-off ends the loop at the better point)."""
    Hc, pw, Cc, weights = _checked(H, p, C, w)
    bc = np.asarray(b, dtype=np.complex128)
    m = receive_beamformer(Hc, bc, Cc, weights)
    bc = inversion_scalings(Hc, m, pw, weights)
    trace = [aircomp_mse(Hc, bc, m, Cc, weights)]
    for _ in range(max_iter):
        m_next = receive_beamformer(Hc, bc, Cc, weights)
        b_next = inversion_scalings(Hc, m_next, pw, weights)
        value = aircomp_mse(Hc, b_next, m_next, Cc, weights)
        if value > trace[-1]:
            break
        m, bc = m_next, b_next
        trace.append(value)
        if trace[-2] - value <= tol * trace[-2]:
            break
    return _design(Hc, bc, m, Cc, weights, "mmse", tuple(trace))


def reduced_mse(
    m: NDArray[np.complex128],
    H: NDArray[np.complex128],
    p: NDArray[np.float64],
    C: NDArray[np.complex128],
    w: NDArray[np.float64],
) -> tuple[float, NDArray[np.complex128]]:
    """The MSE with the best scalings for ``m`` substituted (:func:`inversion_scalings`),
    ``F(m) = sum_q max(0, w_q - sqrt(p_q) |m^H h_q|)^2 + m^H C m``, and its gradient
    ``2 dF/dm* = 2 C m - 2 sum_q max(0, w_q - sqrt(p_q) |a_q|) sqrt(p_q) h_q a_q / |a_q|``
    (``a_q = h_q^H m``)."""
    a = H.conj().T @ m
    r = np.abs(a)
    short = np.clip(w - np.sqrt(p) * r, 0.0, None)
    Cm = C @ m
    unit = np.divide(a, r, out=np.zeros_like(a), where=r > 0)
    grad = 2.0 * Cm - 2.0 * (H @ (short * np.sqrt(p) * unit))
    return float(np.sum(short**2) + np.real(np.vdot(m, Cm))), grad


def _descend(
    H: NDArray[np.complex128],
    p: NDArray[np.float64],
    C: NDArray[np.complex128],
    w: NDArray[np.float64],
    m0: NDArray[np.complex128],
) -> NDArray[np.complex128]:
    """A local minimiser of :func:`reduced_mse` from ``m0`` (L-BFGS on ``m / s``, ``s`` the rms
    entry of ``m0``, so that the variables are of order one whatever the path loss)."""
    n = m0.size
    scale = float(np.linalg.norm(m0)) / np.sqrt(n)
    if scale == 0:
        return m0

    def objective(z: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        value, grad = reduced_mse(scale * (z[:n] + 1j * z[n:]), H, p, C, w)
        grad = grad * scale
        return value, np.concatenate([grad.real, grad.imag])

    z0 = np.concatenate([m0.real, m0.imag]) / scale
    found = minimize(
        objective,
        z0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 2000, "gtol": 1e-12, "ftol": 1e-15},
    )
    z = found.x if found.fun <= objective(z0)[0] else z0
    result: NDArray[np.complex128] = scale * (z[:n] + 1j * z[n:])
    return result


def _zero_design(
    H: NDArray[np.complex128], w: NDArray[np.float64], kind: DesignName
) -> AirCompDesign:
    n_rx, n_users = H.shape
    zeros = np.zeros(n_users, dtype=np.complex128)
    return AirCompDesign(np.zeros(n_rx, dtype=np.complex128), zeros, w, zeros, 0.0, kind, (0.0,))


def _designs(
    H: NDArray[np.complex128],
    p: NDArray[np.float64],
    C: NDArray[np.complex128],
    w: NDArray[np.float64],
    starts: tuple[NDArray[np.complex128], ...],
    tol: float,
) -> tuple[AirCompDesign, AirCompDesign | None]:
    """The MMSE design and the unbiased one (``None`` where none exists), found together:
    descend from the full-power beamformer and ``starts``; search the unbiased designs along the
    best beamformer's direction and the re-weighting's; descend from that one too."""

    def polish(m0: NDArray[np.complex128]) -> AirCompDesign:
        m = _descend(H, p, C, w, np.asarray(m0, dtype=np.complex128))
        return alternate(H, p, C, w, inversion_scalings(H, m, p, w), tol=tol)

    full = receive_beamformer(H, np.sqrt(p).astype(np.complex128), C, w)
    best = min((polish(m0) for m0 in (full, *starts)), key=lambda d: d.mse)
    if not (_positive_definite(C) and _reachable(H, p, w)):
        return best, None
    unbiased = _unbiased_search(H, p, C, w, full, best.m)
    again = polish(unbiased.m)
    return (again if again.mse < best.mse else best), unbiased


def design_mmse(
    H: ArrayLike,
    p: ArrayLike,
    C: ArrayLike,
    w: ArrayLike,
    *,
    starts: tuple[NDArray[np.complex128], ...] = (),
    tol: float = DEFAULT_TOL,
) -> AirCompDesign:
    """The MMSE AirComp design (module docs). The alternation (:func:`alternate`) converges
    slowly where the SNR is high, so each start is first brought near a minimum of the reduced
    MSE :func:`reduced_mse` by L-BFGS; the alternation then polishes it (its ``trace`` never
    rises). The starts are the full-power beamformer (``b_q = sqrt(p_q)``), ``starts`` and the
    unbiased design (:func:`design_zf`), so the result is never worse than that one; the best
    local minimum is kept.

    With one user it reaches ``w^2 / (1 + p h^H C^-1 h)``: ``w^2`` times eq. 5's ``mu``.
    """
    Hc, pw, Cc, weights = _checked(H, p, C, w)
    if not np.any(weights > 0):
        return _zero_design(Hc, weights, "mmse")
    return _designs(Hc, pw, Cc, weights, starts, tol)[0]


def _unbiased_along(
    H: NDArray[np.complex128],
    p: NDArray[np.float64],
    C: NDArray[np.complex128],
    w: NDArray[np.float64],
    direction: NDArray[np.complex128],
) -> AirCompDesign | None:
    """The unbiased design with beamformer along ``direction`` (``None``: some user with
    ``w_q > 0`` cannot reach it, ``a^H h_q = 0`` or ``p_q = 0``)."""
    a = direction.conj() @ H
    need = w > 0
    reach = np.abs(a) * np.sqrt(p)
    if np.any(reach[need] == 0):
        return None
    t = float(np.max(w[need] / reach[need]))
    m = t * direction
    g_dir = m.conj() @ H
    b = np.zeros_like(g_dir)
    b[need] = w[need] / g_dir[need]
    return _design(H, b, m, C, w, "zf")


def _positive_definite(C: NDArray[np.complex128]) -> bool:
    vals = np.linalg.eigvalsh(C)
    return bool(vals[0] > 1e-12 * max(float(vals[-1]), 1e-300))


def _reachable(H: NDArray[np.complex128], p: NDArray[np.float64], w: NDArray[np.float64]) -> bool:
    need = w > 0
    return bool(np.all(p[need] > 0) and np.all(np.linalg.norm(H[:, need], axis=0) > 0))


def _unbiased_search(
    H: NDArray[np.complex128],
    p: NDArray[np.float64],
    C: NDArray[np.complex128],
    w: NDArray[np.float64],
    *directions: NDArray[np.complex128],
) -> AirCompDesign:
    """The best unbiased design over ``directions`` and the Lagrangian re-weighting's
    principal eigenvectors (module docs; ``C`` positive definite, every user reachable)."""
    vals, vecs = np.linalg.eigh(C)
    inv_root = (vecs / np.sqrt(vals)[None, :]) @ vecs.conj().T  # C^(-1/2)
    need = w > 0
    white = (inv_root @ H)[:, need]
    cost = w[need] ** 2 / p[need]
    candidates = list(directions)
    lam = np.full(white.shape[1], 1.0 / white.shape[1])
    for step in range(ZF_STEPS):
        R = (white * (lam / cost)[None, :]) @ white.conj().T
        v = np.linalg.eigh(0.5 * (R + R.conj().T))[1][:, -1]
        candidates.append(inv_root @ v)
        margin = np.abs(v.conj() @ white) ** 2 / cost
        lam = lam * np.exp(-(margin / margin.mean() - 1.0) / np.sqrt(step + 1.0))
        lam /= lam.sum()
    designs = [d for c in candidates if (d := _unbiased_along(H, p, C, w, c)) is not None]
    return min(designs, key=lambda d: d.mse)


def design_zf(H: ArrayLike, p: ArrayLike, C: ArrayLike, w: ArrayLike) -> AirCompDesign:
    """The unbiased (zero-forcing) AirComp design: ``g_q = w_q`` for every user, MSE
    ``m^H C m`` (module docs), the best over the re-weighting's directions and those of the
    full-power and the MMSE beamformers. ``C`` must be positive definite (a thermal floor):
    with a noise-free direction the unbiased MSE can be driven to zero and has no minimiser.

    With one user: ``w^2 / (p h^H C^-1 h) = w^2 / SINR``, the unbiased MMSE filter's MSE.
    """
    Hc, pw, Cc, weights = _checked(H, p, C, w)
    if not np.any(weights > 0):
        return _zero_design(Hc, weights, "zf")
    if not _positive_definite(Cc):
        raise InputError(
            "the zero-forcing AirComp design needs a positive-definite noise covariance; add a "
            "thermal floor (thermal_power > 0) or use the mmse design"
        )
    if not _reachable(Hc, pw, weights):
        raise InputError(
            "a user with a scale w_q > 0 has no power or a zero channel: no unbiased design "
            "exists; use the mmse design"
        )
    unbiased = _designs(Hc, pw, Cc, weights, (), DEFAULT_TOL)[1]
    assert unbiased is not None
    return unbiased


def design_aircomp(
    H: ArrayLike, p: ArrayLike, C: ArrayLike, w: ArrayLike, design: DesignName = "mmse"
) -> AirCompDesign:
    """The AirComp transceiver of ``design`` (``mmse`` or ``zf``) for ``(H, p, C)`` and scales
    ``w``."""
    if design == "mmse":
        return design_mmse(H, p, C, w)
    if design == "zf":
        return design_zf(H, p, C, w)
    raise InputError(f"unknown AirComp design {design!r}; choose one of {', '.join(DESIGNS)}")


def aircomp_sum(
    vectors: list[NDArray[np.floating]],
    design: AirCompDesign,
    rng: np.random.Generator,
) -> NDArray[np.float32]:
    """The received sum, simulated literally: ``sum_q g_q tau_q / w_q + m^H z`` on the complex
    channel (module docs: two real entries per use), so that truncation's bias and the phase of
    ``g_q`` show as they would on the air. ``vectors`` are the users' ``tau_q`` (equal length);
    a user with ``w_q = 0`` sends nothing."""
    n = vectors[0].size
    uses = (n + 1) // 2
    total = np.zeros(uses, dtype=np.complex128)
    for q, tau in enumerate(vectors):
        if design.w[q] == 0 or design.gains[q] == 0:
            continue
        x = np.zeros(2 * uses, dtype=np.float64)
        x[:n] = tau / design.w[q]
        total += design.gains[q] * (x[0::2] + 1j * x[1::2])
    noise = rng.standard_normal((2, uses)) * np.sqrt(design.noise_power / 2.0)
    total = total / np.sqrt(2.0) + (noise[0] + 1j * noise[1])
    out = np.empty(2 * uses, dtype=np.float64)
    out[0::2] = np.sqrt(2.0) * total.real
    out[1::2] = np.sqrt(2.0) * total.imag
    return out[:n].astype(np.float32)
