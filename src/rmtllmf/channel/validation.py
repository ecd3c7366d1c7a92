"""Argument checks shared by the channel functions.

Each check returns a normalised copy (dtype, shape) or raises :class:`~rmtllmf.errors.InputError`
naming the argument and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from rmtllmf.errors import InputError

#: Relative tolerance for Hermitian symmetry and positive semi-definiteness of covariances.
COVARIANCE_RTOL = 1e-9


def check_channel(H: ArrayLike, name: str = "H") -> NDArray[np.complex128]:
    """A channel matrix of shape ``(N_R, Q)``: 2-D, finite, at least one antenna and one user."""
    arr = np.asarray(H)
    if arr.ndim != 2:
        raise InputError(
            f"{name} must be a 2-D array of shape (N_R antennas, Q users); got {arr.ndim}-D "
            f"shape {arr.shape}. Pass one user's channel as a column, e.g. h[:, None]."
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"{name} must have at least one antenna and one user; got {arr.shape}")
    arr = arr.astype(np.complex128, copy=False)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or Inf; every channel coefficient must be finite")
    return arr


def check_powers(p: ArrayLike, n_users: int, name: str = "p") -> NDArray[np.float64]:
    """Transmit powers in watts: shape ``(Q,)``, real, finite, non-negative."""
    arr = np.asarray(p)
    if np.iscomplexobj(arr):
        raise InputError(f"{name} must be real transmit powers in watts; got a complex array")
    arr = np.atleast_1d(arr.astype(np.float64))
    if arr.shape != (n_users,):
        raise InputError(
            f"{name} must have shape ({n_users},), one power per user (column of H); "
            f"got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or Inf; powers must be finite watts")
    if np.any(arr < 0):
        raise InputError(
            f"{name} must be >= 0 W; got negative entries at {np.flatnonzero(arr < 0)}"
        )
    return arr


def check_nonnegative(value: float, name: str) -> float:
    """A finite scalar >= 0 (a power budget, a noise floor)."""
    val = float(value)
    if not np.isfinite(val) or val < 0:
        raise InputError(f"{name} must be a finite number >= 0 (watts); got {value}")
    return val


def check_covariance(C: ArrayLike, n_rx: int, name: str = "C_z") -> NDArray[np.complex128]:
    """A noise covariance: ``(N_R, N_R)``, finite, Hermitian and positive semi-definite.

    Tiny asymmetries from floating point are removed by returning ``(C + C^H) / 2``.
    """
    arr = np.asarray(C)
    if arr.shape != (n_rx, n_rx):
        raise InputError(
            f"{name} must have shape ({n_rx}, {n_rx}) to match the {n_rx} receive antennas of H; "
            f"got {arr.shape}"
        )
    arr = arr.astype(np.complex128, copy=False)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or Inf; a covariance must be finite")
    scale = float(np.max(np.abs(arr))) if arr.size else 0.0
    if np.max(np.abs(arr - arr.conj().T), initial=0.0) > COVARIANCE_RTOL * max(scale, 1e-300):
        raise InputError(f"{name} is not Hermitian (C != C^H); a noise covariance must be")
    arr = np.asarray(0.5 * (arr + arr.conj().T), dtype=np.complex128)
    if scale > 0:
        lam_min = float(np.linalg.eigvalsh(arr)[0])
        if lam_min < -COVARIANCE_RTOL * scale * n_rx:
            raise InputError(
                f"{name} is not positive semi-definite (smallest eigenvalue {lam_min:.3e}); "
                "a noise covariance must be PSD"
            )
    return arr


def check_vectors(vectors: Sequence[ArrayLike], n_users: int | None) -> list[NDArray[np.floating]]:
    """The users' vectors as flat, finite float arrays (one per user when ``n_users`` is set)."""
    arrays = [np.asarray(v) for v in vectors]
    if n_users is not None and len(arrays) != n_users:
        raise InputError(f"got {len(arrays)} vectors for {n_users} users; send one per user")
    for q, a in enumerate(arrays):
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.floating):
            raise InputError(
                f"vector of user {q} must be a flat float array (flatten the task vector first); "
                f"got dtype {a.dtype}, shape {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise InputError(f"vector of user {q} contains NaN or Inf; it cannot be transmitted")
    return arrays
