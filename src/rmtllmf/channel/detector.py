"""Linear MMSE-SIC detection on symbols, in the order of eq. 3 (weakest user first).

For the user decoded ``k``-th (``q = order[k]``) the receiver applies the *unbiased* MMSE filter

``w_q = X_q^{-1} h_q / (sqrt(p_q) h_q^H X_q^{-1} h_q)``, so that ``w_q^H h_q sqrt(p_q) = 1``,

to the signal left after subtracting the users decoded before it. The residual (stronger users
not yet decoded, plus noise) has variance ``w_q^H X_q w_q = 1 / SINR_q``; the biased MMSE
estimate ``SINR/(1+SINR) * r`` has MSE ``1/(1+SINR_q) = mu_q`` (eq. 5).

**Reduced form.** A linear receiver sees the noise only through ``e = W^H z``, whose law is
``CN(0, W^H C_z W)``: a ``Q``-dimensional Gaussian, correlated across users through the shared
noise. Sampling ``e`` directly is exact (the same joint law of every detection statistic as
sampling ``z`` in ``N_R`` dimensions) and cheaper. With the effective channel
``G = W^H H sqrt(P)`` (rows: filters in decoding order, columns: users in decoding order,
``G[k, k] = 1``), the statistic of the ``k``-th decoded user is

``r_k = sum_j G[k, j] s_j + e_k - sum_{j<k} G[k, j] s_hat_j``,

with ``s_hat_j`` the *detected* symbols (decision feedback, so error propagation is real) or the
true ones (genie-aided SIC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from rmtllmf.channel.linalg import NULL_RTOL, hermitian_split, null_fraction, psd_sqrt
from rmtllmf.channel.mac import sic_order
from rmtllmf.channel.qam import QamConstellation


@dataclass(frozen=True)
class SicReceiver:
    """Filters and effective channel of MMSE-SIC for one channel state (decoding order)."""

    order: NDArray[np.intp]
    filters: NDArray[np.complex128]
    effective: NDArray[np.complex64]
    sinr: NDArray[np.float64]
    noise_factor: NDArray[np.complex64]

    @property
    def n_users(self) -> int:
        """Number of users ``Q``."""
        return int(self.order.size)

    @property
    def shrink(self) -> NDArray[np.float64]:
        """Factor ``SINR/(1+SINR)`` turning the unbiased statistic into the MMSE estimate."""
        with np.errstate(invalid="ignore"):
            return np.where(np.isinf(self.sinr), 1.0, self.sinr / (1.0 + self.sinr))


def build_sic_receiver(
    H: NDArray[np.complex128], p: NDArray[np.float64], C_z: NDArray[np.complex128]
) -> SicReceiver:
    """Eq. 3's receiver: unbiased MMSE-SIC filters for ``(H, p, C_z)`` (inputs assumed validated)
    and each user's SINR.

    Where ``h_q`` has energy outside the range of ``X_q`` (singular noise), the filter is the
    projection onto that noise-free direction: unbiased, zero noise, ``SINR = inf``. A user with
    no power or a zero channel cannot be detected: its filter is zero (``SINR = 0``).
    """
    n_rx, n_users = H.shape
    order = sic_order(H, p)
    W = np.zeros((n_rx, n_users), dtype=np.complex128)
    sinr = np.zeros(n_users)
    X = C_z.astype(np.complex128, copy=True)
    for k in range(n_users - 1, -1, -1):
        q = order[k]
        h = H[:, q]
        amp = float(np.sqrt(p[q]))
        if amp > 0 and np.any(h != 0):
            split = hermitian_split(X)
            if null_fraction(split, h) > NULL_RTOL:
                n = split.null_basis @ (split.null_basis.conj().T @ h)
                W[:, k] = n / (amp * np.vdot(n, h))
                sinr[k] = np.inf
            else:
                coef = split.range_basis.conj().T @ h
                v = split.range_basis @ (coef / split.values)
                quad = float(np.real(np.vdot(h, v)))
                W[:, k] = v / (amp * quad)
                sinr[k] = p[q] * quad
        X += p[q] * np.outer(h, h.conj())
    G = W.conj().T @ (H[:, order] * np.sqrt(p[order])[None, :])
    noise_cov = W.conj().T @ C_z @ W
    return SicReceiver(
        order=order,
        filters=W,
        effective=G.astype(np.complex64),
        sinr=sinr,
        noise_factor=psd_sqrt(0.5 * (noise_cov + noise_cov.conj().T)).astype(np.complex64),
    )


def draw_projected_noise(
    rx: SicReceiver, n: int, rng: np.random.Generator
) -> NDArray[np.complex64]:
    """Eq. 2's noise after the filters: ``e = W^H z`` for ``n`` channel uses, drawn as ``F w``
    with ``F F^H = W^H C_z W`` and ``w ~ CN(0, I_Q)``; shape ``(Q, n)`` in decoding order."""
    w = rng.standard_normal((2, rx.n_users, n), dtype=np.float32)
    white = (w[0] + 1j * w[1]).astype(np.complex64) * np.float32(np.sqrt(0.5))
    result: NDArray[np.complex64] = rx.noise_factor @ white
    return result


def sic_detect(
    rx: SicReceiver,
    sent: NDArray[np.complex64],
    noise: NDArray[np.complex64],
    constellation: QamConstellation,
    *,
    genie: bool = False,
) -> tuple[NDArray[np.uint8 | np.uint16], NDArray[np.complex64]]:
    """Eq. 2 in reduced form, ``W^H y = G s + e``, then SIC: detect ``sent`` (constellation
    points, shape ``(Q, n)``, decoding order) given the projected noise ``e``; returns the
    hard-decision symbol indices and the unbiased pre-decision statistics."""
    G = rx.effective
    stats = G @ sent + noise
    decided = np.empty_like(sent)
    indices = np.empty(sent.shape, dtype=np.uint16)
    reference = sent if genie else decided
    for k in range(rx.n_users):
        if k:
            stats[k] -= G[k, :k] @ reference[:k]
        idx = constellation.demodulate(stats[k])
        indices[k] = idx
        decided[k] = constellation.points[idx]
    return indices, stats
