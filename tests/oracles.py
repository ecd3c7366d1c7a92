"""Independent reference implementations used by the tests (brute force, textbook formulas).

Nothing here calls the code under test; each function is written from the definition.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erfc


def random_channel(rng: np.random.Generator, n_rx: int, n_users: int) -> np.ndarray:
    return (
        rng.standard_normal((n_rx, n_users)) + 1j * rng.standard_normal((n_rx, n_users))
    ) / np.sqrt(2)


def logdet_sum_rate(H: np.ndarray, p: np.ndarray, C: np.ndarray) -> float:
    """log det(I + H P H^H C^{-1}) by slogdet of an explicit inverse."""
    S = (H * p) @ H.conj().T
    return float(np.linalg.slogdet(np.eye(H.shape[0]) + S @ np.linalg.inv(C))[1])


def brute_force_sic_rates(H: np.ndarray, p: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Eq. 3 with X_q built explicitly from a Python-sorted list of users and np.linalg.solve."""
    strength = [(p[q] * np.sum(np.abs(H[:, q]) ** 2), q) for q in range(H.shape[1])]
    order = [q for _, q in sorted(strength)]
    rates = np.zeros(H.shape[1])
    for pos, q in enumerate(order):
        X = C.copy()
        for later in order[pos + 1 :]:
            X = X + p[later] * np.outer(H[:, later], H[:, later].conj())
        h = H[:, q]
        rates[q] = np.log(1 + p[q] * np.real(h.conj() @ np.linalg.solve(X, h)))
    return rates


def pam_gray_ber(order: int, snr: float) -> float:
    """Exact BER of Gray square M-QAM from the PAM transition probabilities (per axis).

    Each axis carries sqrt(M)-PAM at levels (2n - (L-1))/a with a = sqrt(2(M-1)/3), noise
    variance per axis N0/2 = 1/(2 snr). P(n -> m) is a Gaussian probability between the decision
    boundaries; errors are weighted by the Hamming distance of the Gray labels n^(n>>1).
    """
    side = round(np.sqrt(order))
    a = np.sqrt(2 * (order - 1) / 3)
    sigma = np.sqrt(1 / (2 * snr))
    bits_axis = int(np.log2(side))

    def tail(x: float) -> float:  # P(N(0, sigma^2) > x)
        return 0.5 * erfc(x / (sigma * np.sqrt(2)))

    def interval_probability(lo: float, hi: float) -> float:
        """P(lo < N(0, sigma^2) < hi), written so that no tiny tail is lost to 1 - (1 - x)."""
        if lo >= 0:
            return tail(lo) - tail(hi)
        if hi <= 0:
            return tail(-hi) - tail(-lo)
        return 1.0 - tail(-lo) - tail(hi)

    total = 0.0
    for n in range(side):
        level = (2 * n - (side - 1)) / a
        for m in range(side):
            lo = -np.inf if m == 0 else (2 * m - side) / a
            hi = np.inf if m == side - 1 else (2 * m - side + 2) / a
            prob = interval_probability(lo - level, hi - level)
            hamming = bin((n ^ (n >> 1)) ^ (m ^ (m >> 1))).count("1")
            total += prob * hamming
    return total / (side * bits_axis)


def brute_force_sic_detect(
    H: np.ndarray,
    p: np.ndarray,
    C: np.ndarray,
    symbols: np.ndarray,
    z: np.ndarray,
    points: np.ndarray,
) -> np.ndarray:
    """Full N_R-dimensional MMSE-SIC with decision feedback, user by user, minimum-distance
    decisions by exhaustive search over the constellation; decided indices in caller order."""
    strength = p * np.sum(np.abs(H) ** 2, axis=0)
    order = np.argsort(strength, kind="stable")
    y = H @ (np.sqrt(p)[:, None] * points[symbols]) + z
    decided = np.zeros(symbols.shape, dtype=int)
    for pos, q in enumerate(order):
        X = C.copy()
        for later in order[pos + 1 :]:
            X = X + p[later] * np.outer(H[:, later], H[:, later].conj())
        h = H[:, q]
        v = np.linalg.solve(X, h)
        w = v / (np.sqrt(p[q]) * np.real(h.conj() @ v))
        r = w.conj() @ y
        decided[q] = np.argmin(np.abs(r[:, None] - points[None, :]), axis=1)
        y = y - np.outer(h * np.sqrt(p[q]), points[decided[q]])
    return decided
