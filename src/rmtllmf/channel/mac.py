"""MIMO multiple-access channel with successive interference cancellation (paper eqs. 2-5).

Received signal (eq. 2): ``y = sum_q h_q sqrt(p_q) s_q + z``, ``z ~ CN(0, C_z)``, unit-energy
symbols ``s_q``. The base station decodes in the SIC order ``p_1||h_1||^2 <= ... <= p_Q||h_Q||^2``
(weakest first); user ``q`` sees the not-yet-decoded stronger users as interference:

* eq. 3: ``R_q = log(1 + p_q h_q^H X_q^{-1} h_q)`` with ``X_q = sum_{q'>q} p_q' h_q' h_q'^H + C_z``
  (nats per channel use);
* eq. 5: ``mu_q = (1 + p_q h_q^H X_q^{-1} h_q)^{-1} = exp(-R_q)``, the MSE of the linear MMSE
  estimate of ``s_q``;
* eq. 4: the sum rate. The paper prints ``log(1 + sum_q p_q h_q^H C_z^{-1} h_q)``, which is exact
  only for a single user; the sum capacity of the MAC that its eq. 13 minimises, and that the SIC
  rates add up to by the chain rule, is ``log det(I + H P H^H C_z^{-1})``. We implement the latter.

Every function takes ``H`` of shape ``(N_R, Q)``, ``p`` of shape ``(Q,)`` in watts and ``C_z`` of
shape ``(N_R, N_R)`` in watts, and returns per-user results in the caller's user order (column
order of ``H``), whatever the SIC order is.

A singular ``C_z`` is handled on its range (pseudo-inverse). When a user's channel has energy in a
direction where neither noise nor undecoded interference lives, its SINR is genuinely infinite;
the functions then return ``inf`` rate / zero MSE and emit
:class:`~rmtllmf.errors.DegenerateChannelWarning`.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike, NDArray

from rmtllmf.channel.linalg import (
    NULL_RTOL,
    hermitian_split,
    null_fraction,
    pinv_quadratic_form,
)
from rmtllmf.channel.validation import check_channel, check_covariance, check_powers
from rmtllmf.errors import DegenerateChannelWarning


def sic_order(H: ArrayLike, p: ArrayLike) -> NDArray[np.intp]:
    """Decoding order of the users: indices sorted by ascending ``p_q ||h_q||^2`` (ties keep the
    caller's order). Element ``k`` is the user decoded ``k``-th."""
    Hc = check_channel(H)
    pw = check_powers(p, Hc.shape[1])
    strength = pw * np.sum(np.abs(Hc) ** 2, axis=0)
    return np.argsort(strength, kind="stable")


def _validated(
    H: ArrayLike, p: ArrayLike, C_z: ArrayLike
) -> tuple[NDArray[np.complex128], NDArray[np.float64], NDArray[np.complex128]]:
    Hc = check_channel(H)
    pw = check_powers(p, Hc.shape[1])
    C = check_covariance(C_z, Hc.shape[0])
    return Hc, pw, C


def _warn_infinite(users: list[int], what: str) -> None:
    if users:
        warnings.warn(
            f"{what} is infinite for user(s) {users}: their signal has energy in a receive "
            "direction that carries neither noise nor undecoded interference (singular noise "
            "covariance). Add a thermal floor (thermal_power > 0) for a physical configuration.",
            DegenerateChannelWarning,
            stacklevel=3,
        )


def sic_sinrs(H: ArrayLike, p: ArrayLike, C_z: ArrayLike) -> NDArray[np.float64]:
    """Eq. 3's SINR: post-MMSE-SIC ``p_q h_q^H X_q^{-1} h_q`` of each user (inside the log).

    Returns ``inf`` (with a :class:`DegenerateChannelWarning`) where ``h_q`` leaves the range of
    ``X_q``; a user with ``p_q = 0`` or ``h_q = 0`` has SINR 0.
    """
    Hc, pw, C = _validated(H, p, C_z)
    order = sic_order(Hc, pw)
    sinr = np.zeros(Hc.shape[1])
    X = C.copy()
    infinite: list[int] = []
    for q in order[::-1]:  # strongest first: X_q only holds users decoded after q
        h = Hc[:, q]
        if pw[q] > 0 and np.any(h != 0):
            split = hermitian_split(X)
            if null_fraction(split, h) > NULL_RTOL:
                sinr[q] = np.inf
                infinite.append(int(q))
            else:
                sinr[q] = pw[q] * pinv_quadratic_form(split, h)
        X += pw[q] * np.outer(h, h.conj())
    _warn_infinite(sorted(infinite), "SINR")
    return sinr


def sic_rates(H: ArrayLike, p: ArrayLike, C_z: ArrayLike) -> NDArray[np.float64]:
    """Eq. 3: per-user achievable rate ``R_q`` under MMSE-SIC in nats per channel use."""
    return np.log1p(sic_sinrs(H, p, C_z))


def user_mse(H: ArrayLike, p: ArrayLike, C_z: ArrayLike) -> NDArray[np.float64]:
    """Eq. 5: per-user MSE of the linear MMSE symbol estimate, ``mu_q = 1/(1 + SINR_q) =
    exp(-R_q)``. Always in ``(0, 1]``, or exactly 0 for an infinite SINR."""
    return 1.0 / (1.0 + sic_sinrs(H, p, C_z))


def sum_rate(H: ArrayLike, p: ArrayLike, C_z: ArrayLike) -> float:
    """Eq. 4 (exact form): sum rate ``log det(I + H P H^H C_z^{-1})`` in nats per channel use.

    The paper's printed ``log(1 + sum_q p_q h_q^H C_z^{-1} h_q)`` equals it only for one user.

    For singular ``C_z`` this is evaluated on the range of ``C_z`` when every user's signal lies
    there, and is ``inf`` (with a warning) otherwise.
    """
    Hc, pw, C = _validated(H, p, C_z)
    G = Hc * np.sqrt(pw)[None, :]
    split = hermitian_split(C)
    outside = [q for q in range(G.shape[1]) if null_fraction(split, G[:, q]) > NULL_RTOL]
    if outside:
        _warn_infinite(outside, "the sum rate")
        return float("inf")
    whitened = (split.range_basis.conj().T @ G) / np.sqrt(split.values)[:, None]
    singular = np.linalg.svd(whitened, compute_uv=False)
    return float(np.sum(np.log1p(singular**2)))
