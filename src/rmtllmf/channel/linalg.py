"""Small Hermitian linear-algebra helpers that treat singular covariances exactly.

A noise covariance may be singular (a jammer that puts all its power on one direction, no thermal
floor). Where the maths allows, quantities are computed on the covariance's range (the
pseudo-inverse); where it does not (a signal with energy in a noise-free direction), the caller is
told, so it can report an infinite SINR instead of a number produced by round-off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

#: Eigenvalues below ``RANK_RTOL * largest`` count as zero (supports 120 dB of dynamic range).
RANK_RTOL = 1e-12
#: A vector is "inside" the range when the norm of its null-space part is below this fraction.
NULL_RTOL = 1e-8


@dataclass(frozen=True)
class HermitianSplit:
    """Eigen-split ``X = U_r diag(x_r) U_r^H`` with ``U_n`` spanning the numerical null space."""

    values: NDArray[np.float64]
    range_basis: NDArray[np.complex128]
    null_basis: NDArray[np.complex128]

    @property
    def rank(self) -> int:
        """Numerical rank of ``X``."""
        return int(self.values.size)


def hermitian_split(X: NDArray[np.complex128], rtol: float = RANK_RTOL) -> HermitianSplit:
    """Split a Hermitian PSD matrix into its range (eigenvalues > ``rtol * max``) and null space."""
    vals, vecs = np.linalg.eigh(X)
    top = float(vals[-1]) if vals.size else 0.0
    keep = vals > rtol * top if top > 0 else np.zeros(vals.shape, dtype=bool)
    return HermitianSplit(vals[keep], vecs[:, keep], vecs[:, ~keep])


def null_fraction(split: HermitianSplit, v: NDArray[np.complex128]) -> float:
    """``||P_null v|| / ||v||``: how much of ``v`` lies where ``X`` has no energy (0 for v = 0)."""
    norm = float(np.linalg.norm(v))
    if norm == 0.0 or split.null_basis.shape[1] == 0:
        return 0.0
    return float(np.linalg.norm(split.null_basis.conj().T @ v)) / norm


def pinv_quadratic_form(split: HermitianSplit, v: NDArray[np.complex128]) -> float:
    """``v^H X^+ v`` on the range of ``X``; equals ``v^H X^{-1} v`` when ``X`` is invertible."""
    coef = split.range_basis.conj().T @ v
    return float(np.sum(np.abs(coef) ** 2 / split.values))


def psd_sqrt(X: NDArray[np.complex128]) -> NDArray[np.complex128]:
    """A factor ``F`` with ``F F^H = X`` for Hermitian PSD ``X`` (works when ``X`` is singular,
    where a Cholesky factorisation fails)."""
    vals, vecs = np.linalg.eigh(X)
    result: NDArray[np.complex128] = vecs * np.sqrt(np.clip(vals, 0.0, None))[None, :]
    return result
