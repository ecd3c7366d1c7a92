"""The AirComp link: every user's task vector on the air at once, the sum read by one beamformer.

Each user normalises its vector with the scale of the analog link it replaces
(:func:`~rmtllmf.channel.link.segment_scales`: ``w_q = sqrt(s_q)``, per tensor where that link
measures per tensor), so the symbols ``x_q = tau_q / w_q`` are those the statistical link
carries and both receivers are compared on the same symbols, at the same peak power ``p_q`` and
in the same channel uses (``ceil(D / 2)`` per vector). The base station designs one AirComp
transceiver per distinct set of scales (:func:`~rmtllmf.channel.aircomp.design_aircomp`; one
in all for a whole-vector scale) and receives ``sum_q g_q tau_q / w_q + m^H z`` literally
(:func:`~rmtllmf.channel.aircomp.aircomp_sum`).

As for eq. 5's ``mu`` on the ``absolute`` and ``snr`` links (the paper's convention), the design
takes the symbols to have unit energy; there they carry the power of the task vector's entries
(``snr``: ``S_ref``), so the bias ``sum_q |g_q - w_q|^2`` weighs less in what is received than
in the closed form, while the noise ``m^H C m`` weighs the same. On ``relative`` links the
symbols have unit power and the closed form is the received error's variance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from rmtllmf.channel.aircomp import AirCompDesign, DesignName, aircomp_sum, design_aircomp
from rmtllmf.channel.link import PAPER_SIGNAL_POWER, NoiseScale, segment_scales
from rmtllmf.channel.quantize import check_segments
from rmtllmf.channel.scenario import ChannelRealization
from rmtllmf.channel.validation import check_vectors
from rmtllmf.errors import InputError


@dataclass(frozen=True)
class AirCompResult:
    """What the AirComp link delivered: the estimate of ``sum_q tau_q`` and its transceivers."""

    received: NDArray[np.float32]
    designs: tuple[AirCompDesign, ...]
    """One per segment (the same object where segments share their scales)."""
    segments: NDArray[np.int64]

    @property
    def _lengths(self) -> NDArray[np.float64]:
        return np.diff(self.segments).astype(np.float64)

    def _entry_mean(self, values: Sequence[float]) -> float:
        lengths = self._lengths
        total = float(lengths.sum())
        return float(np.dot(lengths, values) / total) if total else 0.0

    @property
    def mse(self) -> float:
        """The closed-form MSE per entry, averaged over entries."""
        return self._entry_mean([d.mse for d in self.designs])

    @property
    def noise_power(self) -> NDArray[np.float64]:
        """``m^H C m`` of each segment: the variance of the noise in the received sum."""
        return np.array([d.noise_power for d in self.designs])

    def energy(self, p: NDArray[np.float64]) -> NDArray[np.float64]:
        """Each user's mean transmit power over its peak, ``|b_q|^2 / p_q``, over entries (at
        most 1 by the designs' constraint; a user at full power can exceed it by round-off in
        ``|b_q|^2``, which is clipped)."""
        lengths = self._lengths
        per = np.array([d.energy for d in self.designs])  # (segments, users)
        mean = lengths @ per / max(float(lengths.sum()), 1.0)
        ratio = np.divide(mean, p, out=np.zeros_like(mean), where=p > 0)
        result: NDArray[np.float64] = np.minimum(ratio, 1.0)
        return result


def aircomp_scales(
    vectors: Sequence[NDArray[np.floating]],
    seg: NDArray[np.int64],
    scale: NoiseScale,
    *,
    per_segment: bool = False,
    reference_power: float = PAPER_SIGNAL_POWER,
) -> NDArray[np.float64]:
    """The users' scales ``w_q = sqrt(s_q)`` per segment, shape ``(segments, users)``."""
    return np.stack(
        [
            np.sqrt(
                segment_scales(
                    x, seg, scale, per_segment=per_segment, reference_power=reference_power
                )
            )
            for x in vectors
        ],
        axis=1,
    )


def transmit_aircomp(
    vectors: Sequence[ArrayLike],
    channel: ChannelRealization,
    rng: np.random.Generator,
    *,
    scale: NoiseScale = "snr",
    segments: ArrayLike | None = None,
    per_segment: bool = False,
    reference_power: float = PAPER_SIGNAL_POWER,
    design: DesignName = "mmse",
) -> AirCompResult:
    """Send every user's flat vector (one per column of ``channel.H``, equal lengths, the same
    ``segments``) at once and return the base station's estimate of their sum (module docs)."""
    arrays = check_vectors(vectors, channel.H.shape[1])
    sizes = {a.size for a in arrays}
    if len(sizes) != 1:
        raise InputError(
            f"AirComp adds the users' vectors entry by entry: give equal lengths, "
            f"got {sorted(sizes)}"
        )
    n = sizes.pop()
    seg = check_segments(segments, n)
    scales = aircomp_scales(
        arrays, seg, scale, per_segment=per_segment, reference_power=reference_power
    )
    cache: dict[bytes, AirCompDesign] = {}
    designs = []
    for w in scales:
        key = w.tobytes()
        if key not in cache:
            cache[key] = design_aircomp(channel.H, channel.p, channel.C_z, w, design)
        designs.append(cache[key])
    received = np.empty(n, dtype=np.float32)
    for j, d in enumerate(designs):
        lo, hi = int(seg[j]), int(seg[j + 1])
        if hi > lo:
            received[lo:hi] = aircomp_sum([a[lo:hi] for a in arrays], d, rng)
    return AirCompResult(received, tuple(designs), seg)
