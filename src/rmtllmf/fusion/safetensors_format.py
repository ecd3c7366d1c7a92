"""The safetensors format without torch: dtypes, headers, positional reads, and where a
checkpoint's files are.

A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's dtype,
shape and byte span; an optional ``__metadata__`` of strings), then the raw bytes. The linear
merges read and write files at this level only (:mod:`rmtllmf.fusion.fast.fused`), so they need
neither torch nor a memory map; :mod:`rmtllmf.fusion.checkpoint` builds torch tensors on it.

:class:`Dtype` names a stored dtype as torch and ``config.json`` spell it (``bfloat16``) and
as the header does (``BF16``); code that takes either a :class:`Dtype` or a ``torch.dtype``
compares them by :func:`dtype_name`.
"""

from __future__ import annotations

import functools
import io
import json
import math
import mmap
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rmtllmf._io import Closing
from rmtllmf.errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
"""Pickled checkpoints, refused unless a caller allows them (:mod:`rmtllmf.fusion.checkpoint`)."""


class DtypeLike(Protocol):
    """What the format needs of a dtype: a :class:`Dtype` or a ``torch.dtype``."""

    @property
    def itemsize(self) -> int: ...

    @property
    def is_floating_point(self) -> bool: ...


@dataclass(frozen=True)
class Dtype:
    """A dtype a safetensors file stores: ``name`` as torch spells it, ``code`` as the header
    does, its bytes per entry and whether it is a floating-point type."""

    name: str
    code: str
    itemsize: int
    is_floating_point: bool

    def __str__(self) -> str:
        return self.name


DTYPES = {
    d.code: d
    for d in (
        Dtype("float64", "F64", 8, True),
        Dtype("float32", "F32", 4, True),
        Dtype("float16", "F16", 2, True),
        Dtype("bfloat16", "BF16", 2, True),
        Dtype("int64", "I64", 8, False),
        Dtype("int32", "I32", 4, False),
        Dtype("int16", "I16", 2, False),
        Dtype("int8", "I8", 1, False),
        Dtype("uint8", "U8", 1, False),
        Dtype("bool", "BOOL", 1, False),
    )
}
"""The dtypes by header code."""
BY_NAME = {d.name: d for d in DTYPES.values()}
"""The dtypes by name (``float32``)."""


def dtype_name(dtype: object) -> str:
    """``torch.bfloat16`` or ``Dtype('bfloat16', ...)`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def resolve_files(path: str | Path) -> list[Path]:
    """The tensor files behind a checkpoint path (one file, or the shards of an HF directory)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"checkpoint {p} does not exist; give a .safetensors file or a model directory"
        )
    if p.is_file():
        return [p]
    index = p / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = [str(name) for name in dict.fromkeys(weight_map.values())]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(
                f"cannot read the shard index {index} ({exc}); it must be JSON with a "
                "'weight_map' of tensor name -> shard file, as transformers writes it"
            ) from exc
        outside = [n for n in names if Path(n).anchor or ".." in Path(n).parts]
        if outside:
            raise CheckpointError(
                f"the shard index {index} names files outside its directory ({outside[0]!r}); "
                "shard files must lie beside the index"
            )
        return [p / name for name in names]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (p / name).exists():
            return [p / name]
    candidates = sorted(p.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates
    raise CheckpointError(
        f"no weights found in directory {p}: expected model.safetensors, a sharded "
        "model.safetensors.index.json, or a single *.safetensors file"
    )


_Spans = dict[str, tuple[int, int]]
_Entries = dict[str, tuple[Dtype, tuple[int, ...]]]


@functools.lru_cache(maxsize=16)
def _parse_header(raw: bytes) -> tuple[_Spans, _Entries, int]:
    """Byte spans in the file, (dtype, shape) and the end of the data of every tensor, from the
    ``len(raw)``-byte JSON header of a safetensors file. Files whose headers are the same bytes
    (a base model and its fine-tuned copies, usually) share one parse, whose dictionaries are
    read-only. Raises ``ValueError`` or ``KeyError`` for a malformed header."""
    n = len(raw)
    header = json.loads(raw)
    header.pop("__metadata__", None)
    spans: _Spans = {}
    entries: _Entries = {}
    end = 8 + n
    for key, info in header.items():
        start, stop = (8 + n + o for o in info["data_offsets"])
        dtype, shape = DTYPES[info["dtype"]], tuple(info["shape"])
        need = math.prod(shape) * dtype.itemsize
        if stop - start != need:
            raise ValueError(
                f"tensor {key!r} takes {stop - start} bytes in the header, but its shape "
                f"{list(shape)} of {dtype} needs {need}; re-save the file"
            )
        spans[key] = (start, stop)
        entries[key] = (dtype, shape)
        end = max(end, stop)
    return spans, entries, end


def _read_header(fd: int, path: Path) -> tuple[_Spans, _Entries]:
    """The byte span (start, stop) in the file and the (dtype, shape) of every tensor of the open
    safetensors file ``fd``, checked to lie inside the file."""
    try:
        size = os.fstat(fd).st_size
        (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
        if 8 + n > size:
            raise ValueError(f"header of {n} bytes runs past the end of the file")
        spans, entries, end = _parse_header(os.pread(fd, n, 8))
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise CheckpointError(f"cannot read {path} as safetensors: {exc}") from exc
    if end > size:
        key = next(k for k, (_, stop) in spans.items() if stop > size)
        raise CheckpointError(
            f"{path} is truncated: tensor {key!r} runs past the end; re-download or re-save it"
        )
    return spans, entries


class RawSafetensors(Closing):
    """Positional reads of one safetensors file's tensor bytes (``pread``; no memory map).

    The header is parsed once; :meth:`read_into` copies a byte range of one tensor straight from
    the page cache into a caller's buffer, so a blocked merge touches every input byte exactly
    once and its resident memory is only its buffers. Use as a context manager.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise CheckpointError(f"cannot open {self.path}: {exc}") from exc
        try:
            self.spans, self.entries = _read_header(self._fd, self.path)
        except CheckpointError:
            os.close(self._fd)
            raise

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def fileno(self) -> int:
        """The open file's descriptor (valid until :meth:`close`)."""
        return self._fd

    @property
    def label(self) -> str:
        """The file, for messages."""
        return str(self.path)

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self.entries)

    def meta(self, key: str) -> tuple[tuple[int, ...], Dtype]:
        """Shape and dtype of a tensor (as :meth:`LazyCheckpoint.meta`)."""
        if key not in self.entries:
            raise CheckpointError(f"tensor {key!r} is missing from {self.path}")
        dtype, shape = self.entries[key]
        return shape, dtype

    def read_into(self, key: str, offset: int, buffer: memoryview) -> None:
        """Fill ``buffer`` with tensor ``key``'s bytes from byte ``offset`` on."""
        start, stop = self.spans[key]
        if start + offset + len(buffer) > stop:
            raise CheckpointError(f"read past the end of tensor {key!r} in {self.path}")
        if hasattr(os, "preadv"):
            got = os.preadv(self._fd, [buffer], start + offset)
        else:  # no positional reads (Windows): seek, then read (one thread at a time)
            with io.FileIO(self._fd, closefd=False) as file:
                file.seek(start + offset)
                got = file.readinto(buffer) or 0
        if got != len(buffer):
            raise CheckpointError(f"{self.path} shrank while tensor {key!r} was being read")


def safetensors_prefix(
    layout: Iterable[tuple[str, tuple[int, ...], DtypeLike]],
    metadata: dict[str, str] | None = None,
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The bytes before a safetensors file's data (8-byte little-endian header length, then
    the JSON header padded to 8 bytes) and each tensor's ``(start, stop)`` byte span in the
    file, for ``(name, shape, dtype)`` entries in file order."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, shape, dtype in layout:
        stored = BY_NAME.get(dtype_name(dtype))
        if stored is None:
            raise CheckpointError(f"tensor {name!r}: dtype {dtype} cannot be stored in safetensors")
        size = stored.itemsize
        for dim in shape:
            size *= dim
        header[name] = {
            "dtype": stored.code,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * ((-len(blob)) % 8)
    prefix = struct.pack("<Q", len(blob)) + blob
    spans = {
        k: (len(prefix) + v["data_offsets"][0], len(prefix) + v["data_offsets"][1])
        for k, v in header.items()
        if k != "__metadata__"
    }
    return prefix, spans


NONFINITE_CHUNK = 1 << 20
"""Entries per step of :func:`count_nonfinite_stored` (a 1 MiB boolean scratch, whatever the
tensor)."""

_EXPONENT_MASKS = {"bfloat16": (np.uint16, 0x7F80)}
"""The exponent bits of a dtype numpy has no type for: all of them set is an infinity or NaN."""


def count_nonfinite_stored(raw: RawSafetensors, keys: Iterable[str]) -> dict[str, int]:
    """The NaN and infinite entries of each of ``keys`` as stored in ``raw``, for the keys that
    have any (integer tensors have none). The file is memory-mapped once and read in place, a
    chunk at a time."""
    found: dict[str, int] = {}
    with mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        for key in keys:
            dtype, shape = raw.entries[key]
            n = math.prod(shape)
            if not dtype.is_floating_point or n == 0:
                continue
            masked = _EXPONENT_MASKS.get(dtype.name)
            view_type = masked[0] if masked else np.dtype(dtype.name)
            data = np.frombuffer(mapped, view_type, count=n, offset=raw.spans[key][0])
            bad = 0
            for first in range(0, n, NONFINITE_CHUNK):
                chunk = data[first : first + NONFINITE_CHUNK]
                if masked:
                    bad += int(np.count_nonzero((chunk & masked[1]) == masked[1]))
                elif not np.isfinite(chunk).all():
                    bad += int(np.count_nonzero(~np.isfinite(chunk)))
            del data, chunk  # the map closes only once no array views it
            if bad:
                found[key] = bad
    return found
