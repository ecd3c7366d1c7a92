"""Gray-coded square M-QAM with unit average symbol energy, and its exact AWGN bit error rate.

Symbol index ``i`` (``k = log2 M`` bits, MSB first) splits into the in-phase bits (upper
``k/2``) and the quadrature bits (lower ``k/2``). Each half is a Gray code ``g`` of a PAM level
``n = gray^{-1}(g) in {0..sqrt(M)-1}`` at amplitude ``(2n - (sqrt(M) - 1)) / a`` with
``a = sqrt(2(M - 1)/3)``, so ``E|s|^2 = 1``. Neighbouring points differ in exactly one bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import isqrt, log2

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import erfc

from rmtllmf.errors import InputError

SUPPORTED_ORDERS = (4, 16, 64, 256)


def _gray_decode(g: NDArray[np.int64]) -> NDArray[np.int64]:
    n = g.copy()
    shift = g >> 1
    while np.any(shift):
        n ^= shift
        shift >>= 1
    return n


@dataclass(frozen=True)
class QamConstellation:
    """Square Gray-coded M-QAM (M in 4, 16, 64, 256), unit average energy."""

    order: int
    points: NDArray[np.complex64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.order not in SUPPORTED_ORDERS:
            raise InputError(
                f"modulation order {self.order} is not supported; use one of {SUPPORTED_ORDERS}"
            )
        half = self.bits_per_symbol // 2
        idx = np.arange(self.order, dtype=np.int64)
        side = self.side
        level_i = _gray_decode(idx >> half)
        level_q = _gray_decode(idx & (side - 1))
        pts = ((2 * level_i - (side - 1)) + 1j * (2 * level_q - (side - 1))) / self.amplitude_scale
        object.__setattr__(self, "points", pts.astype(np.complex64))

    @property
    def bits_per_symbol(self) -> int:
        """``k = log2 M``."""
        return int(log2(self.order))

    @property
    def side(self) -> int:
        """Points per axis, ``sqrt(M)``."""
        return isqrt(self.order)

    @property
    def amplitude_scale(self) -> float:
        """``a = sqrt(2(M-1)/3)``: dividing integer levels by it gives unit average energy."""
        return float(np.sqrt(2.0 * (self.order - 1) / 3.0))

    def modulate(self, indices: ArrayLike) -> NDArray[np.complex64]:
        """Symbol indices in ``[0, M)`` to constellation points."""
        result: NDArray[np.complex64] = self.points[np.asarray(indices)]
        return result

    def demodulate(self, z: NDArray[np.complexfloating]) -> NDArray[np.uint8 | np.uint16]:
        """Hard minimum-distance decisions (per axis, exact for square QAM) to symbol indices."""
        side = self.side
        half = self.bits_per_symbol // 2
        dtype = np.uint8 if self.order <= 256 else np.uint16
        scale = np.float32(0.5 * self.amplitude_scale)
        offset = np.float32(0.5 * (side - 1))
        top = np.float32(side - 1)
        n_i = np.clip(np.rint(z.real * scale + offset), 0, top).astype(dtype)
        n_q = np.clip(np.rint(z.imag * scale + offset), 0, top).astype(dtype)
        g_i = n_i ^ (n_i >> 1)
        g_q = n_q ^ (n_q >> 1)
        result: NDArray[np.uint8 | np.uint16] = (g_i << half) | g_q
        return result


def qam_ber_awgn(order: int, snr: ArrayLike) -> NDArray[np.float64]:
    """Exact bit error rate of Gray-coded square M-QAM in complex AWGN at symbol SNR ``Es/N0``.

    Cho & Yoon, "On the general BER expression of one- and two-dimensional amplitude
    modulations", IEEE Trans. Commun. 50(7), 2002, eq. (14)-(16): with ``I = sqrt(M)``,
    ``P_b = (1/log2 I) sum_{k=1}^{log2 I} P_b(k)``,
    ``P_b(k) = (1/I) sum_{i=0}^{(1-2^{-k}) I - 1} (-1)^{floor(i 2^{k-1}/I)}
    (2^{k-1} - floor(i 2^{k-1}/I + 1/2)) erfc((2i+1) sqrt(3 Es/N0 / (2(M-1))))``.
    """
    if order not in SUPPORTED_ORDERS:
        raise InputError(
            f"modulation order {order} is not supported; use one of {SUPPORTED_ORDERS}"
        )
    gamma = np.asarray(snr, dtype=np.float64)
    side = isqrt(order)
    n_bits = int(log2(side))
    arg = np.sqrt(3.0 * gamma / (2.0 * (order - 1)))
    total = np.zeros_like(gamma)
    for k in range(1, n_bits + 1):
        pk = np.zeros_like(gamma)
        for i in range(int((1 - 2.0**-k) * side)):
            w = i * 2 ** (k - 1) / side
            pk += (
                (-1) ** int(np.floor(w))
                * (2 ** (k - 1) - np.floor(w + 0.5))
                * erfc((2 * i + 1) * arg)
            )
        total += pk / side
    result: NDArray[np.float64] = total / n_bits
    return result
