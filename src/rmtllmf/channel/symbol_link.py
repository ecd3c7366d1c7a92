"""The digital uplink (beyond the paper): real transmission of the task vectors.

Each user quantises its vector per segment (:mod:`~rmtllmf.channel.quantize`), maps the bits to
Gray M-QAM (:mod:`~rmtllmf.channel.qam`); all users transmit at once through
``y = sum_q h_q sqrt(p_q) s_q + z`` (eq. 2); the BS runs linear MMSE-SIC with decision feedback
(:mod:`~rmtllmf.channel.detector`), demaps hard decisions and dequantises. Noise is shared, so
the users' errors are correlated. Work is chunked: memory is the inputs, the outputs and
``O(chunk_symbols * Q)``, never every symbol at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field
from threadpoolctl import threadpool_limits

from rmtllmf.channel.detector import (
    SicReceiver,
    build_sic_receiver,
    draw_projected_noise,
    sic_detect,
)
from rmtllmf.channel.qam import QamConstellation, qam_ber_awgn
from rmtllmf.channel.quantize import (
    MAX_BITS,
    Quantizer,
    codes_per_block,
    codes_to_symbols,
    fit_quantizer,
    symbols_to_codes,
)
from rmtllmf.channel.scenario import ChannelRealization
from rmtllmf.channel.units import linear_to_db
from rmtllmf.channel.validation import (
    check_channel,
    check_covariance,
    check_powers,
    check_vectors,
)
from rmtllmf.errors import InputError


class SymbolLinkConfig(BaseModel):
    """Settings of the digital link (frozen)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    bits: int = Field(8, ge=1, le=MAX_BITS, description="quantiser bits per value")
    modulation_order: Literal[4, 16, 64, 256] = Field(64, description="M of Gray M-QAM")
    coherence_symbols: int | None = Field(
        None, ge=1, description="block-fading length; None = one channel state for everything"
    )
    genie: bool = Field(False, description="cancel true symbols instead of decisions (genie SIC)")
    chunk_symbols: int = Field(1 << 15, ge=64, description="channel uses processed per chunk")
    workers: int | None = Field(
        None, ge=1, description="threads processing chunks; None = number of CPU cores (max 8)"
    )

    @property
    def resolved_workers(self) -> int:
        """Worker threads actually used. Results do not depend on it (per-chunk seeds)."""
        return self.workers or min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class UserLinkStats:
    """What one user's transmission looked like (theory next to measurement)."""

    snr_db: float
    sinr_db: float
    rate_nats: float
    mse_theory: float
    symbol_mse: float
    ber_theory: float
    ber: float
    vector_mse: float
    n_symbols: int


@dataclass(frozen=True)
class SymbolLinkResult:
    """Received vectors (caller's user order) and per-user statistics."""

    received: list[NDArray[np.float32]]
    stats: list[UserLinkStats]


@dataclass
class _Accumulator:
    sq_err: NDArray[np.float64]
    bit_err: NDArray[np.int64]

    def add(self, other: _Accumulator) -> None:
        self.sq_err += other.sq_err
        self.bit_err += other.bit_err


def _receivers_for(
    channel: ChannelRealization,
    n_uses: int,
    coherence: int | None,
    redraw: Callable[[np.random.Generator], ChannelRealization] | None,
    rng: np.random.Generator,
) -> tuple[list[SicReceiver], list[ChannelRealization]]:
    if coherence is None:
        return [build_sic_receiver(channel.H, channel.p, channel.C_z)], [channel]
    if redraw is None:
        raise InputError(
            "coherence_symbols is set but no redraw function was given: pass "
            "redraw=lambda rng: realize(cfg, large_scale, rng) to draw each fading block"
        )
    states = [channel]
    for _ in range(1, -(-n_uses // coherence)):
        states.append(redraw(rng))
    return [build_sic_receiver(s.H, s.p, s.C_z) for s in states], states


def _snr_db(channel: ChannelRealization) -> NDArray[np.float64]:
    """Average received SNR per antenna, ``p_q ||h_q||^2 / tr(C_z)``, in dB."""
    signal = channel.p * np.sum(np.abs(channel.H) ** 2, axis=0)
    noise = float(np.real(np.trace(channel.C_z)))
    with np.errstate(divide="ignore"):
        return linear_to_db(signal / noise) if noise > 0 else np.full(signal.shape, np.inf)


def transmit_symbols(
    vectors: Sequence[ArrayLike],
    channel: ChannelRealization,
    config: SymbolLinkConfig,
    rng: np.random.Generator,
    *,
    segments: Sequence[ArrayLike | None] | None = None,
    redraw: Callable[[np.random.Generator], ChannelRealization] | None = None,
    progress: Callable[[int], None] | None = None,
) -> SymbolLinkResult:
    """Send one flat vector per user through the digital MIMO uplink.

    Vectors may differ in length; a user whose stream has ended keeps the carrier busy with
    random filler symbols, so every channel use sees all ``Q`` users. ``segments[q]`` are the
    tensor boundaries of user ``q``'s vector (one quantiser each). With ``coherence_symbols``,
    ``redraw(rng)`` draws the channel of each following fading block. ``progress`` is called with
    the number of channel uses finished. Statistics (symbol MSE of the MMSE estimate, BER) are
    measured over every transmitted symbol, filler included.
    """
    H = check_channel(channel.H)
    n_users = H.shape[1]
    check_powers(channel.p, n_users)
    check_covariance(channel.C_z, H.shape[0])
    arrays = check_vectors(vectors, n_users)
    const = QamConstellation(config.modulation_order)
    k = const.bits_per_symbol
    unit_codes, unit_syms = codes_per_block(config.bits, k)
    quantizers: list[Quantizer] = [
        fit_quantizer(x, config.bits, None if segments is None else segments[q])
        for q, x in enumerate(arrays)
    ]
    n_syms = np.array([-(-x.size * config.bits // k) for x in arrays])
    n_uses = int(n_syms.max(initial=0))
    chunk = max(unit_syms, config.chunk_symbols // unit_syms * unit_syms)
    fading_rng, noise_root = rng.spawn(2)
    receivers, states = _receivers_for(
        channel, n_uses, config.coherence_symbols, redraw, fading_rng
    )
    starts = list(range(0, n_uses, chunk))
    link = _SymbolChunks(
        arrays=arrays,
        quantizers=quantizers,
        const=const,
        config=config,
        unit_codes=unit_codes,
        unit_syms=unit_syms,
        receivers=receivers,
        coherence=config.coherence_symbols or max(n_uses, 1),
        spans=[(s0, min(s0 + chunk, n_uses)) for s0 in starts],
        seeds=noise_root.bit_generator.seed_seq.spawn(len(starts)),  # type: ignore[attr-defined]
        received=[np.empty(x.size, dtype=np.float32) for x in arrays],
        progress=progress,
    )
    total = _Accumulator(np.zeros(n_users), np.zeros(n_users, dtype=np.int64))
    workers = min(config.resolved_workers, max(len(starts), 1))
    # Chunks are the unit of parallelism; BLAS threads on top of them only contend for cores.
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        for acc in pool.map(link.run, range(len(starts))):
            total.add(acc)
    return SymbolLinkResult(
        link.received, _stats(arrays, link.received, total, receivers, states, n_uses, k, const)
    )


@dataclass
class _SymbolChunks:
    """The digital uplink's work, one chunk of channel uses at a time (chunks run in threads;
    each has its own noise generator, so the result does not depend on their order)."""

    arrays: list[NDArray[np.float32]]
    quantizers: list[Quantizer]
    const: QamConstellation
    config: SymbolLinkConfig
    unit_codes: int
    unit_syms: int
    receivers: list[SicReceiver]
    coherence: int
    spans: list[tuple[int, int]]
    seeds: list[np.random.SeedSequence]
    received: list[NDArray[np.float32]]
    progress: Callable[[int], None] | None

    def run(self, i: int) -> _Accumulator:
        """Channel uses ``spans[i]``: modulate, send and detect, demodulate into ``received``."""
        s0, s1 = self.spans[i]
        crng = np.random.Generator(np.random.PCG64(self.seeds[i]))
        sent_idx, code_ranges = self._modulate(s0, s1, crng)
        decided, acc = self._detect(sent_idx, s0, s1, crng)
        k = self.const.bits_per_symbol
        for q, (c0, c1) in enumerate(code_ranges):
            if c1 > c0:
                codes = symbols_to_codes(decided[q], self.config.bits, k, c1 - c0)
                self.received[q][c0:c1] = self.quantizers[q].decode(codes, c0)
        if self.progress is not None:
            self.progress(s1 - s0)
        return acc

    def _modulate(
        self, s0: int, s1: int, crng: np.random.Generator
    ) -> tuple[NDArray[np.uint16], list[tuple[int, int]]]:
        """Each user's symbol indices for uses ``s0..s1`` (random filler once its stream has
        ended) and the range of its codes they carry."""
        n = s1 - s0
        k = self.const.bits_per_symbol
        sent_idx = np.empty((len(self.arrays), n), dtype=np.uint16)
        code_ranges = []
        for q, x in enumerate(self.arrays):
            c0 = s0 // self.unit_syms * self.unit_codes
            c1 = min(-(-s1 // self.unit_syms) * self.unit_codes, x.size)
            code_ranges.append((c0, max(c0, c1)))
            syms = np.empty(0, dtype=np.uint16)
            if c1 > c0:
                codes = self.quantizers[q].encode(x[c0:c1], c0)
                syms = codes_to_symbols(codes, self.config.bits, k)[:n]
            sent_idx[q, : syms.size] = syms
            if syms.size < n:
                sent_idx[q, syms.size :] = crng.integers(0, self.const.order, n - syms.size)
        return sent_idx, code_ranges

    def _detect(
        self, sent_idx: NDArray[np.uint16], s0: int, s1: int, crng: np.random.Generator
    ) -> tuple[NDArray[np.uint16], _Accumulator]:
        """Eq. 2 over each fading block of uses ``s0..s1``: noise, SIC detection, and the
        symbol-MSE and bit-error counts."""
        n_users = len(self.arrays)
        acc = _Accumulator(np.zeros(n_users), np.zeros(n_users, dtype=np.int64))
        decided = np.empty_like(sent_idx)
        coherence = self.coherence
        for b0 in range(s0 - s0 % coherence, s1, coherence):
            a, b = max(b0, s0) - s0, min(b0 + coherence, s1) - s0
            rx = self.receivers[b0 // coherence]
            order_idx = sent_idx[rx.order, a:b]
            points = self.const.points[order_idx]
            noise = draw_projected_noise(rx, b - a, crng)
            det, stat = sic_detect(rx, points, noise, self.const, genie=self.config.genie)
            decided[rx.order, a:b] = det
            err = stat * rx.shrink.astype(np.float32)[:, None] - points
            acc.sq_err[rx.order] += np.sum(err.real**2 + err.imag**2, axis=1, dtype=np.float64)
            acc.bit_err[rx.order] += np.sum(
                np.bitwise_count(order_idx ^ det), axis=1, dtype=np.int64
            )
        return decided, acc


def _mean_square_error(a: NDArray[np.floating], b: NDArray[np.floating]) -> float:
    """``mean((a - b)^2)`` in float64, a block at a time (no full-size temporaries)."""
    if a.size == 0:
        return 0.0
    block = 1 << 20
    total = 0.0
    for i in range(0, a.size, block):
        d = a[i : i + block].astype(np.float64) - b[i : i + block]
        total += float(np.dot(d, d))
    return total / a.size


def _stats(
    sent: list[NDArray[np.floating]],
    received: list[NDArray[np.float32]],
    total: _Accumulator,
    receivers: list[SicReceiver],
    states: list[ChannelRealization],
    n_uses: int,
    k: int,
    const: QamConstellation,
) -> list[UserLinkStats]:
    """Per-user statistics; theory is averaged over fading blocks (SINR in dB of the mean)."""
    n_users = len(sent)
    sinr = np.zeros((len(receivers), n_users))
    for i, rx in enumerate(receivers):
        sinr[i, rx.order] = rx.sinr
    snr = np.mean([_snr_db(s) for s in states], axis=0)
    mse_theory = np.mean(1.0 / (1.0 + sinr), axis=0)
    ber_theory = np.mean(qam_ber_awgn(const.order, np.where(np.isinf(sinr), 1e300, sinr)), axis=0)
    rate = np.mean(np.log1p(sinr), axis=0)
    count = max(n_uses, 1)
    out = []
    for q in range(n_users):
        out.append(
            UserLinkStats(
                snr_db=float(snr[q]),
                sinr_db=float(linear_to_db(np.mean(sinr[:, q]))),
                rate_nats=float(rate[q]),
                mse_theory=float(mse_theory[q]),
                symbol_mse=float(total.sq_err[q] / count),
                ber_theory=float(ber_theory[q]),
                ber=float(total.bit_err[q] / (count * k)),
                vector_mse=_mean_square_error(sent[q], received[q]),
                n_symbols=n_uses,
            )
        )
    return out
