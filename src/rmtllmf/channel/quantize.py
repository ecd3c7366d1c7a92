"""Uniform per-segment quantisation of a flat float vector, and packing codes into QAM symbols.

A task vector is a concatenation of tensors with very different ranges; each *segment* (tensor)
gets its own affine quantiser, whose offset and step travel as reliable side information:

``c = round((x - lo) / step)`` with ``step = (hi - lo) / (2^b - 1)`` over the segment's
``[lo, hi]``, and ``x_hat = lo + c * step``. Without bit errors ``|x - x_hat| <= step / 2``; with
bit errors ``x_hat`` still stays inside ``[lo, hi]`` (the digital link never produces NaN/Inf).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np
from numpy.typing import ArrayLike, NDArray

from rmtllmf.errors import InputError

MAX_BITS = 16


def check_segments(bounds: ArrayLike | None, length: int) -> NDArray[np.int64]:
    """Segment boundaries ``[0, b_1, ..., length]``; ``None`` means one segment."""
    if bounds is None:
        return np.array([0, length], dtype=np.int64)
    arr = np.asarray(bounds, dtype=np.int64)
    if (
        arr.ndim != 1
        or arr.size < 2
        or arr[0] != 0
        or arr[-1] != length
        or np.any(np.diff(arr) < 0)
    ):
        raise InputError(
            "segments must be non-decreasing offsets starting at 0 and ending at the vector length "
            f"{length} (e.g. np.cumsum([0, *tensor_sizes])); got {arr.tolist()[:6]}..."
        )
    return arr


@dataclass(frozen=True)
class Quantizer:
    """Per-segment affine quantiser of one vector: ``lows``/``steps`` are the side information."""

    lows: NDArray[np.float64]
    steps: NDArray[np.float64]
    segments: NDArray[np.int64]
    bits: int

    @property
    def length(self) -> int:
        """Length of the vector this quantiser was fitted to."""
        return int(self.segments[-1])

    def _expand(self, start: int, stop: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Per-element ``(lo, step)`` for the slice ``[start, stop)``."""
        seg = self.segments
        j0 = int(np.searchsorted(seg, start, side="right")) - 1
        j1 = int(np.searchsorted(seg, stop, side="left"))
        lengths = np.minimum(seg[j0 + 1 : j1 + 1], stop) - np.maximum(seg[j0:j1], start)
        lengths = np.clip(lengths, 0, None)
        return np.repeat(self.lows[j0:j1], lengths), np.repeat(self.steps[j0:j1], lengths)

    def encode(self, x: NDArray[np.floating], start: int = 0) -> NDArray[np.uint16]:
        """Codes ``round((x - lo) / step)`` of the slice of the vector that begins at ``start``."""
        lo, step = self._expand(start, start + x.size)
        scaled = np.divide(x - lo, step, out=np.zeros(x.size), where=step > 0)
        levels = (1 << self.bits) - 1
        return np.clip(np.rint(scaled), 0, levels).astype(np.uint16)

    def decode(self, codes: NDArray[np.unsignedinteger], start: int = 0) -> NDArray[np.float32]:
        """Values ``lo + c * step`` of the slice that begins at ``start``."""
        lo, step = self._expand(start, start + codes.size)
        return (lo + codes.astype(np.float64) * step).astype(np.float32)


def fit_quantizer(
    x: NDArray[np.floating], bits: int, segments: ArrayLike | None = None
) -> Quantizer:
    """Fit one min-max quantiser per segment of the flat vector ``x``."""
    if not 1 <= bits <= MAX_BITS:
        raise InputError(f"bits must be in 1..{MAX_BITS}, got {bits}")
    flat = np.asarray(x)
    if flat.ndim != 1:
        raise InputError(f"the vector to send must be flat (1-D); got shape {flat.shape}")
    if not np.all(np.isfinite(flat)):
        raise InputError("the vector to send contains NaN or Inf; it cannot be quantised")
    seg = check_segments(segments, flat.size)
    lows = np.zeros(seg.size - 1)
    highs = np.zeros(seg.size - 1)
    nonempty = np.flatnonzero(np.diff(seg) > 0)
    if nonempty.size:
        starts = seg[nonempty]
        lows[nonempty] = np.minimum.reduceat(flat, starts)
        highs[nonempty] = np.maximum.reduceat(flat, starts)
    steps = (highs - lows) / ((1 << bits) - 1)
    return Quantizer(lows, steps, seg, bits)


def codes_per_block(bits: int, bits_per_symbol: int) -> tuple[int, int]:
    """Smallest ``(codes, symbols)`` that hold the same number of bits, ``lcm(b, k)``."""
    lcm = bits * bits_per_symbol // gcd(bits, bits_per_symbol)
    return lcm // bits, lcm // bits_per_symbol


def _to_bits(values: NDArray[np.unsignedinteger], width: int) -> NDArray[np.uint8]:
    """MSB-first bit matrix of shape ``(n, width)`` for ``width <= 16``."""
    as_bytes = values.astype(">u2").view(np.uint8).reshape(-1, 2)
    return np.unpackbits(as_bytes, axis=1)[:, 16 - width :]


def _from_bits(bits: NDArray[np.uint8], width: int) -> NDArray[np.uint16]:
    """Inverse of :func:`_to_bits` for a ``(n, width)`` matrix."""
    padded = np.zeros((bits.shape[0], 16), dtype=np.uint8)
    padded[:, 16 - width :] = bits
    return np.packbits(padded, axis=1).view(">u2").reshape(-1).astype(np.uint16)


def _regroup(
    values: NDArray[np.unsignedinteger], width_in: int, width_out: int, n_out: int
) -> NDArray[np.uint16]:
    """Re-cut an MSB-first stream of ``width_in``-bit fields into ``n_out`` fields of
    ``width_out`` bits (zero-padded at the end).

    Whole words of ``lcm(width_in, width_out)`` bits are assembled in ``uint64`` with shifts when
    they fit (the fast path); otherwise an explicit bit matrix is used.
    """
    lcm = width_in * width_out // gcd(width_in, width_out)
    per_in, per_out = lcm // width_in, lcm // width_out
    n_words = -(-max(values.size, 1) // per_in)
    padded = np.zeros(n_words * per_in, dtype=np.uint64)
    padded[: values.size] = values
    if lcm > 64:
        stream = _to_bits(padded.astype(np.uint16), width_in).reshape(-1)
        return _from_bits(stream[: n_out * width_out].reshape(-1, width_out), width_out)
    fields_in = padded.reshape(n_words, per_in)
    word = np.zeros(n_words, dtype=np.uint64)
    for i in range(per_in):
        word |= fields_in[:, i] << np.uint64(lcm - width_in * (i + 1))
    mask = np.uint64((1 << width_out) - 1)
    out = np.empty((n_words, per_out), dtype=np.uint16)
    for j in range(per_out):
        out[:, j] = (word >> np.uint64(lcm - width_out * (j + 1))) & mask
    return out.reshape(-1)[:n_out]


def codes_to_symbols(
    codes: NDArray[np.unsignedinteger], bits: int, bits_per_symbol: int
) -> NDArray[np.uint16]:
    """Concatenate the codes' bits (MSB first) and cut them into ``bits_per_symbol``-bit symbols.

    The bit stream is zero-padded to a whole number of symbols.
    """
    n_symbols = -(-codes.size * bits // bits_per_symbol)
    return _regroup(codes, bits, bits_per_symbol, n_symbols)


def symbols_to_codes(
    symbols: NDArray[np.unsignedinteger], bits: int, bits_per_symbol: int, n_codes: int
) -> NDArray[np.uint16]:
    """Inverse of :func:`codes_to_symbols`: the first ``n_codes`` codes of the symbol stream."""
    if n_codes * bits > symbols.size * bits_per_symbol:
        raise InputError(
            f"{symbols.size} symbols of {bits_per_symbol} bits cannot hold "
            f"{n_codes} codes of {bits} bits"
        )
    return _regroup(symbols, bits_per_symbol, bits, n_codes)
