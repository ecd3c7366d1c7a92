"""The paper's statistical link (sec. IV): ``tau_hat_q = tau_q + eps_q`` with i.i.d.
``eps_q ~ N(0, s_q mu_q)`` and ``mu_q`` the user's MMSE-SIC MSE (eq. 5).

The scale ``s_q`` is ``absolute`` (``s = 1``: the paper's link, noise of the same size whatever
the model's weights), ``relative`` (``s = E[tau^2]`` per segment: a power-normalised analog link,
where ``mu_q`` is the MSE on unit-power symbols) or ``snr`` (``s = E[tau_q^2] / S_ref``: the
per-entry SNR of the paper's link carried over to a model whose task vectors have another scale;
see :func:`snr_reference_power`). The digital link is :mod:`rmtllmf.channel.symbol_link`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from rmtllmf.channel.quantize import check_segments
from rmtllmf.channel.validation import check_vectors
from rmtllmf.errors import InputError

NoiseScale = Literal["absolute", "relative", "snr"]

PAPER_SNR_DB = -16.2
"""The paper's SNR of the ideal scenario (sec. IV), reported at mean MSE :data:`PAPER_MSE_IDEAL`."""
PAPER_MSE_IDEAL = 0.013
"""The paper's mean MSE ``mu`` of the ideal scenario (sec. IV)."""


def snr_reference_power(snr_db: float = PAPER_SNR_DB, mse: float = PAPER_MSE_IDEAL) -> float:
    """The signal power ``S_ref`` per task-vector entry implied by an SNR reported at an MSE.

    On the paper's link (``tau_hat = tau + N(0, mu)``) the per-entry SNR is
    ``E[tau^2] / mu``, so ``S_ref = mu * 10^(SNR_dB / 10)``: ``0.013 * 10^(-1.62) = 3.12e-4`` for
    the ideal scenario's -16.2 dB at ``mu = 0.013``. That is the mean square of the entries of the
    paper's CLIP ViT-B/16 task vectors. (The paper's worst cases, -21.7 dB at 0.16 and -27.3 dB at
    0.21, imply 1.08e-3 and 3.9e-4: its three reported pairs do not share one signal power; the
    ideal pair is the one measured at the least noise.)
    """
    if not np.isfinite(snr_db) or not mse > 0:
        raise InputError(f"need a finite SNR in dB and an MSE > 0; got {snr_db} dB at {mse}")
    return float(mse * 10.0 ** (snr_db / 10.0))


PAPER_SIGNAL_POWER = snr_reference_power()
"""``S_ref`` of the ``snr`` link: the paper's per-entry task-vector power, 3.12e-4."""


def _segment_power(x: NDArray[np.floating], seg: NDArray[np.int64]) -> NDArray[np.float64]:
    """Mean square of ``x`` over each segment (0 for empty segments)."""
    lengths = np.diff(seg)
    power = np.zeros(lengths.size)
    nonempty = lengths > 0
    if np.any(nonempty):
        sq = x.astype(np.float64) ** 2
        power[nonempty] = np.add.reduceat(sq, seg[:-1][nonempty]) / lengths[nonempty]
    return power


def transmit_statistical(
    vectors: Sequence[ArrayLike],
    mse: ArrayLike,
    rng: np.random.Generator,
    *,
    scale: NoiseScale = "absolute",
    segments: Sequence[ArrayLike | None] | None = None,
    reference_power: float = PAPER_SIGNAL_POWER,
    per_segment: bool = False,
) -> list[NDArray[np.float32]]:
    """Eq. 9's ``tau_hat_q = tau_q + eps_q``, the paper's link: add ``N(0, s_q mu_q)`` noise to
    each user's vector (``eps_q`` is eq. 9's decoding error ``ε̃_q``).

    ``mse`` holds ``mu_q`` per user (e.g. :func:`~rmtllmf.channel.mac.user_mse`). The scale:

    * ``absolute``: ``s_q = 1`` (the paper);
    * ``relative``: ``s_q`` is the mean square of the vector over each segment (tensor),
      ``segments[q]`` giving that user's offsets (``None``: one segment);
    * ``snr``: ``s_q = E[tau_q^2] / reference_power``, ``E[tau_q^2]`` the mean square of the
      user's whole vector (of each segment with ``per_segment=True``), so every entry sees the
      per-entry SNR ``reference_power / mu_q`` that the paper's link gives entries of power
      ``reference_power`` (default :data:`PAPER_SIGNAL_POWER`).
    """
    arrays = check_vectors(vectors, None)
    mu = np.asarray(mse, dtype=np.float64)
    if mu.shape != (len(arrays),):
        raise InputError(
            f"mse must have one entry per vector, shape ({len(arrays)},); got {mu.shape}"
        )
    if not np.all(np.isfinite(mu)) or np.any(mu < 0):
        raise InputError("mse must be finite and >= 0 for every user")
    if scale not in ("absolute", "relative", "snr"):
        raise InputError(f"unknown noise scale {scale!r}; use 'absolute', 'relative' or 'snr'")
    if not (np.isfinite(reference_power) and reference_power > 0):
        raise InputError(f"reference_power must be finite and > 0; got {reference_power}")
    out = []
    for q, x in enumerate(arrays):
        seg = check_segments(None if segments is None else segments[q], x.size)
        s = segment_scales(x, seg, scale, per_segment=per_segment, reference_power=reference_power)
        variance = mu[q] * np.repeat(s, np.diff(seg))
        noise = rng.standard_normal(x.size) * np.sqrt(variance)
        out.append((x + noise).astype(np.float32))
    return out


def segment_scales(
    x: NDArray[np.floating],
    seg: NDArray[np.int64],
    scale: NoiseScale,
    *,
    per_segment: bool = False,
    reference_power: float = PAPER_SIGNAL_POWER,
) -> NDArray[np.float64]:
    """The scale ``s`` of :func:`transmit_statistical` for each segment of the sent vector
    ``x``: ``1`` (``absolute``), the segment's mean square (``relative``), the whole vector's
    mean square over ``reference_power`` (``snr``; the segment's with ``per_segment``). The
    link adds noise of variance ``mu s`` per entry; AirComp (:mod:`rmtllmf.channel.aircomp`)
    takes ``sqrt(s)`` as the user's scale ``w_q``, so both receivers see the same symbols."""
    if scale not in ("absolute", "relative", "snr"):
        raise InputError(f"unknown noise scale {scale!r}; use 'absolute', 'relative' or 'snr'")
    n_seg = seg.size - 1
    if scale == "absolute":
        return np.ones(n_seg)
    if scale == "relative" or per_segment:
        power = _segment_power(x, seg)
        return power if scale == "relative" else power / reference_power
    whole = float(np.mean(x.astype(np.float64) ** 2)) if x.size else 0.0
    return np.full(n_seg, whole / reference_power)


def noise_variance(
    received: ArrayLike,
    mse: float,
    *,
    scale: NoiseScale = "absolute",
    segments: ArrayLike | None = None,
    per_segment: bool = False,
    reference_power: float = PAPER_SIGNAL_POWER,
    offset: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """The BS's estimate of the per-entry variance of the noise :func:`transmit_statistical`
    added to one user's vector, one value per segment, from the user's MSE ``mu`` and the
    received vector alone.

    ``absolute``: ``sigma^2 = mu`` exactly. Otherwise the noise is ``mu c P`` with ``P`` the
    sent vector's mean square (per segment for ``relative`` and with ``per_segment``, over the
    whole vector for ``snr``) and ``c = 1`` (``relative``) or ``1 / reference_power``
    (``snr``). Noise and signal are independent and zero-mean, so the received mean square is
    ``P (1 + mu c)`` and ``sigma^2 = mu c mean(r^2) / (1 + mu c)``, unbiased up to the
    sampling error of ``mean(r^2)``. ``offset`` is added to ``received`` before its power is
    taken: the ``weights`` link sends ``theta_base + tau`` and the BS subtracts ``theta_base``.
    """
    r = np.asarray(received, dtype=np.float64)
    if offset is not None:
        r = r + np.asarray(offset, dtype=np.float64)
    seg = check_segments(segments, r.size)
    if not (np.isfinite(mse) and mse >= 0):
        raise InputError(f"mse must be finite and >= 0; got {mse}")
    if scale == "absolute":
        return np.full(seg.size - 1, float(mse))
    if scale not in ("relative", "snr"):
        raise InputError(f"unknown noise scale {scale!r}; use 'absolute', 'relative' or 'snr'")
    c = 1.0 if scale == "relative" else 1.0 / reference_power
    if scale == "snr" and not per_segment:
        power = np.full(seg.size - 1, float(np.mean(r**2)) if r.size else 0.0)
    else:
        power = _segment_power(r, seg)
    return mse * c * power / (1.0 + mse * c)
