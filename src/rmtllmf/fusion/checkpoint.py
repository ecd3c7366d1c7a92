"""Reading and writing checkpoints tensor by tensor (safetensors in and out, never unpickling).

Sources accepted everywhere a checkpoint is expected:

* a ``.safetensors`` file;
* a Hugging Face model directory with ``model.safetensors`` or a sharded
  ``model.safetensors.index.json``;
* a pickled ``.bin``/``.pt``/``.pth`` file or directory with ``pytorch_model.bin``: refused unless
  ``allow_pickle=True``, and then loaded with ``torch.load(weights_only=True)`` only.

:class:`LazyCheckpoint` opens safetensors with ``safe_open`` and reads one tensor at a time (a
view of the memory-mapped file), so a merge of ``N`` models holds at most a slice of one tensor
per model in memory. Every floating-point tensor it hands out is checked to be finite: a NaN or
an infinity is refused with the file and the key named (:func:`check_finite`), unless the reader
is opened with ``allow_nonfinite=True``. :func:`write_safetensors_streaming` writes a
safetensors file from a generator of tensors, without holding the whole model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from rmtllmf._io import Closing, atomic_output
from rmtllmf._lazy import lazy_module
from rmtllmf.errors import CheckpointError
from rmtllmf.fusion.safetensors_format import (
    DTYPES,
    PICKLE_SUFFIXES,
    resolve_files,
    safetensors_prefix,
)

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")


def _pickle_refusal(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} is a pickle checkpoint; pickles can run code when loaded and are refused. "
        "Convert it to safetensors, or pass allow_pickle=True (--allow-pickle) to load it with "
        "torch.load(weights_only=True) if you trust it."
    )


FINITE_CHUNK = 1 << 20
"""Entries per step of :func:`check_finite` (a 1 MiB boolean scratch, whatever the tensor)."""


def count_nonfinite(tensor: torch.Tensor) -> int:
    """How many entries of a floating-point tensor are NaN or infinite (0 for other dtypes).

    The sum of the entries is the filter, at the speed of memory: a NaN or an infinity makes it
    NaN or infinite (``inf + -inf`` is NaN), so a finite sum proves every entry finite. Only a
    sum that is not finite (a non-finite entry, or finite entries whose sum overflows) is
    counted exactly, :data:`FINITE_CHUNK` entries at a time."""
    if not tensor.dtype.is_floating_point:
        return 0
    flat = tensor.reshape(-1)
    wide = torch.promote_types(tensor.dtype, torch.float32)  # float16 sums overflow early
    if math.isfinite(float(flat.sum(dtype=wide))):
        return 0
    bad = 0
    for start in range(0, flat.numel(), FINITE_CHUNK):
        part = flat[start : start + FINITE_CHUNK]
        if not bool(torch.isfinite(part).all()):
            bad += int((~torch.isfinite(part)).sum())
    return bad


def nonfinite_error(where: str, key: str, tensor: torch.Tensor, bad: int) -> CheckpointError:
    """The one-line refusal of a tensor with NaN or infinite entries."""
    kinds = [
        name
        for name, found in (
            ("NaN", bool(torch.isnan(tensor).any())),
            ("inf", bool(torch.isinf(tensor).any())),
        )
        if found
    ]
    return CheckpointError(
        f"{where}: tensor {key!r} holds {'/'.join(kinds) or 'non-finite'} values ({bad} of "
        f"{tensor.numel()} entries); a merge of it would be NaN or inf there. Check or re-save "
        "that checkpoint, or pass --allow-nonfinite to use it anyway"
    )


def check_finite(tensor: torch.Tensor, where: str, key: str) -> None:
    """Raise :class:`~rmtllmf.errors.CheckpointError` naming ``where`` (a file) and ``key`` if
    the floating-point ``tensor`` holds a NaN or an infinity."""
    bad = count_nonfinite(tensor)
    if bad:
        raise nonfinite_error(where, key, tensor, bad)


class LazyCheckpoint(Closing):
    """Read-only, per-tensor access to a checkpoint. Use as a context manager.

    Floating-point tensors are checked to be finite when first read (:func:`check_finite`);
    ``allow_nonfinite=True`` hands them out as they are."""

    def __init__(
        self, path: str | Path, *, allow_pickle: bool = False, allow_nonfinite: bool = False
    ) -> None:
        self.path = Path(path)
        self.allow_nonfinite = allow_nonfinite
        self._stack = ExitStack()
        self._where: dict[str, Any] = {}
        self._file: dict[str, Path] = {}
        self._checked: set[str] = set()
        self._eager: dict[str, torch.Tensor] = {}
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for file in resolve_files(path):
            if file.suffix in PICKLE_SUFFIXES:
                if not allow_pickle:
                    raise _pickle_refusal(file)
                tensors = _load_pickle(file)
                self._eager.update(tensors)
                self._file.update(dict.fromkeys(tensors, file))
                continue
            try:
                handle = self._stack.enter_context(safe_open(str(file), framework="pt"))
            except (SafetensorError, OSError) as exc:
                self._stack.close()
                raise CheckpointError(
                    f"cannot read {file} as safetensors ({exc}); the file may be truncated or not "
                    "a safetensors file — re-download or re-save it"
                ) from exc
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                self._where[key] = handle
                self._file[key] = file

    def close(self) -> None:
        """Release the open files."""
        self._stack.close()

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return [*self._where, *self._eager]

    def __contains__(self, key: object) -> bool:
        return key in self._where or key in self._eager

    def get(self, key: str) -> torch.Tensor:
        """Load one tensor (checked to be finite, see the class)."""
        if key in self._eager:
            tensor = self._eager[key]
        elif key not in self._where:
            raise CheckpointError(f"tensor {key!r} is missing from {self.path}")
        else:
            try:
                tensor = self._where[key].get_tensor(key)
            except SafetensorError as exc:
                raise CheckpointError(
                    f"cannot read tensor {key!r} from {self.path}: {exc}"
                ) from exc
        if not self.allow_nonfinite and key not in self._checked:
            check_finite(tensor, str(self._file[key]), key)
            self._checked.add(key)
        return tensor

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype of a tensor without loading its data."""
        if key in self._eager:
            t = self._eager[key]
            return tuple(t.shape), t.dtype
        if key not in self._where:
            raise CheckpointError(f"tensor {key!r} is missing from {self.path}")
        if key not in self._meta:
            sl = self._where[key].get_slice(key)
            self._meta[key] = (tuple(sl.get_shape()), torch_dtype(sl.get_dtype()))
        return self._meta[key]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor, loaded (for small models)."""
        return {k: self.get(k) for k in self.keys()}


def torch_dtype(code: str) -> torch.dtype:
    """The torch dtype of a safetensors header code (``BF16`` -> ``torch.bfloat16``)."""
    dtype: torch.dtype = getattr(torch, DTYPES[code].name)
    return dtype


def _load_pickle(file: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{file} does not hold a flat state dict of tensors")
    return dict(obj)


def load_state_dict(
    source: str | Path | dict[str, torch.Tensor],
    *,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
) -> dict[str, torch.Tensor]:
    """A whole state dict from a path (see module docs; NaN and infinities refused unless
    ``allow_nonfinite``) or an in-memory dict (returned as is)."""
    if isinstance(source, dict):
        return source
    with LazyCheckpoint(source, allow_pickle=allow_pickle, allow_nonfinite=allow_nonfinite) as ckpt:
        return ckpt.state_dict()


def save_state_dict(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write tensors as one safetensors file (contiguous copies; shared storage is fine)."""
    with atomic_output(path) as tmp:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, tmp, metadata)


def write_safetensors_streaming(
    path: str | Path,
    layout: Iterable[tuple[str, tuple[int, ...], torch.dtype]],
    tensors: Iterator[tuple[str, torch.Tensor | Iterator[torch.Tensor]]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a safetensors file whose header is known up front, one tensor at a time.

    ``layout`` lists ``(name, shape, dtype)`` in file order; ``tensors`` must then yield exactly
    those tensors in that order, each either whole or as an iterator of consecutive flat chunks
    (so that not even one whole tensor needs to exist). The format: an 8-byte little-endian
    header length, a JSON header of dtype/shape/data_offsets, then the raw bytes.
    """
    entries = list(layout)
    prefix, spans = safetensors_prefix(entries, metadata)
    with atomic_output(path) as tmp, tmp.open("wb") as fh:
        fh.write(prefix)
        for (name, shape, dtype), (got_name, item) in zip(entries, tensors, strict=True):
            expected = spans[name][1] - spans[name][0]
            chunks = [item] if isinstance(item, torch.Tensor) else item
            written = 0
            for chunk in chunks:
                if got_name != name or chunk.dtype != dtype:
                    raise CheckpointError(
                        f"streamed tensor {got_name!r} ({chunk.dtype}) does not match the "
                        f"announced {name!r} {shape} {dtype}"
                    )
                data = chunk.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
                fh.write(data.data)
                written += data.size
            if isinstance(item, torch.Tensor) and tuple(item.shape) != shape:
                raise CheckpointError(
                    f"streamed tensor {name!r} has shape {tuple(item.shape)}, announced {shape}"
                )
            if written != expected:
                raise CheckpointError(
                    f"streamed tensor {name!r}: {written} bytes, announced {expected}"
                )
