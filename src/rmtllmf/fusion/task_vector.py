"""Task vectors (paper eq. 1): ``tau_q = theta_ft,q - theta_base``, and their arithmetic.

A :class:`TaskVector` maps parameter names to float32 tensors. It is built from a base and a
fine-tuned model given as state dicts, ``.safetensors`` files, Hugging Face directories or PEFT
LoRA adapter directories (:mod:`rmtllmf.fusion.adapters`), one tensor at a time (the two models
are never both fully in memory); checkpoints with NaN or infinite values are refused unless
``allow_nonfinite``. Construction is strict: the selected floating-point key sets, shapes and
dtypes of both models must agree, and every disagreement is reported by name.

The channel sends flat arrays: :meth:`TaskVector.flatten` concatenates the tensors in a fixed
order described by :class:`VectorLayout`, whose ``segments`` are the tensor boundaries the
per-tensor quantiser and power normalisation of :mod:`rmtllmf.channel` use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeAlias

import numpy as np
from numpy.typing import NDArray

from rmtllmf._lazy import lazy_module
from rmtllmf.errors import InputError
from rmtllmf.fusion.adapters import AdapterSource, is_adapter_dir
from rmtllmf.fusion.checkpoint import LazyCheckpoint, load_state_dict, save_state_dict
from rmtllmf.fusion.params import ALL_PARAMS, ParamFilter, is_floating
from rmtllmf.fusion.safetensors_format import DtypeLike, dtype_name

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

ModelSource: TypeAlias = "str | Path | Mapping[str, torch.Tensor]"


def _names(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(k) for k in list(keys)[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


@dataclass(frozen=True)
class VectorLayout:
    """Order, names and shapes of the tensors in a flattened task vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> NDArray[np.int64]:
        """Number of elements of each tensor."""
        return np.array([int(np.prod(s)) for s in self.shapes], dtype=np.int64)

    @property
    def segments(self) -> NDArray[np.int64]:
        """Tensor boundaries ``[0, n_1, n_1 + n_2, ..., total]`` in the flat vector."""
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    @property
    def total(self) -> int:
        """Length of the flat vector."""
        return int(self.sizes.sum())


class TensorSource:
    """Uniform per-tensor access to an in-memory state dict or a lazy checkpoint (whose
    floating-point tensors are checked to be finite unless ``allow_nonfinite``)."""

    def __init__(
        self, source: ModelSource, allow_pickle: bool, allow_nonfinite: bool = False
    ) -> None:
        self._dict: Mapping[str, torch.Tensor] | None = None
        self._lazy: LazyCheckpoint | None = None
        if isinstance(source, Mapping):
            self._dict = source
            self.label = "state dict"
        else:
            self._lazy = LazyCheckpoint(
                source, allow_pickle=allow_pickle, allow_nonfinite=allow_nonfinite
            )
            self.label = str(source)

    def keys(self) -> list[str]:
        """Tensor names in order."""
        if self._lazy is not None:
            return self._lazy.keys()
        assert self._dict is not None
        return list(self._dict)

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype of one tensor."""
        if self._lazy is not None:
            return self._lazy.meta(key)
        assert self._dict is not None
        t = self._dict[key]
        return tuple(t.shape), t.dtype

    def get(self, key: str) -> torch.Tensor:
        """One tensor (read from disk for a checkpoint)."""
        if self._lazy is not None:
            return self._lazy.get(key)
        assert self._dict is not None
        return self._dict[key]

    def close(self) -> None:
        """Release the checkpoint's file, if any."""
        if self._lazy is not None:
            self._lazy.close()


ModelReader = TensorSource | AdapterSource
"""A fine-tuned model as the merge reads it: a checkpoint or state dict, or a LoRA adapter."""


def open_finetuned(
    source: ModelSource,
    base: TensorSource,
    *,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
) -> ModelReader:
    """A fine-tuned model's reader: an :class:`AdapterSource` over ``base`` for a PEFT adapter
    directory, else a :class:`TensorSource`."""
    if is_adapter_dir(source):
        assert not isinstance(source, Mapping)
        return AdapterSource(
            source, base, allow_pickle=allow_pickle, allow_nonfinite=allow_nonfinite
        )
    return TensorSource(source, allow_pickle, allow_nonfinite)


class TensorIndex(Protocol):
    """Names, shapes and dtypes of a model's tensors (:class:`TensorSource`, or a
    :class:`~rmtllmf.fusion.safetensors_format.RawSafetensors` file)."""

    @property
    def label(self) -> str:
        """The model, for messages."""
        ...

    def keys(self) -> list[str]:
        """Tensor names in order."""
        ...

    def meta(self, key: str) -> tuple[tuple[int, ...], DtypeLike]:
        """Shape and dtype of one tensor."""
        ...


def selected_keys(
    base: TensorIndex, others: Sequence[TensorIndex], param_filter: ParamFilter, what: str
) -> list[str]:
    """Floating-point keys of ``base`` selected by the filter, checked to be the same keys with
    the same shapes and dtypes in each of ``others`` (called ``what``, numbered from the second
    on: "fine-tuned model #2", ...)."""
    keys_base = [
        k
        for k in base.keys()  # noqa: SIM118 (not a dict)
        if param_filter.matches(k) and is_floating(base.meta(k)[1])
    ]
    if not keys_base:
        floating = [k for k in base.keys() if is_floating(base.meta(k)[1])]  # noqa: SIM118
        raise InputError(
            f"no floating-point parameter of the base ({base.label}) is selected by include "
            f"{list(param_filter.include)} and exclude {list(param_filter.exclude)}, so nothing "
            + (
                f"would be merged; fix the patterns (--include / --exclude) to match names such "
                f"as {_names(floating)}"
                if floating
                else "would be merged: the base has no floating-point tensor; check the base"
            )
        )
    set_base = set(keys_base)
    for i, other in enumerate(others, start=1):
        label = what if i == 1 else f"{what} #{i}"
        keys_other = other.keys()
        set_other = set(keys_other)
        missing = [k for k in keys_base if k not in set_other or not is_floating(other.meta(k)[1])]
        extra = [
            k
            for k in keys_other
            if k not in set_base and param_filter.matches(k) and is_floating(other.meta(k)[1])
        ]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing from the {label} ({other.label}): {_names(missing)}")
            if extra:
                parts.append(f"not in the base ({base.label}): {_names(extra)}")
            raise InputError(
                "the models do not have the same parameters; " + "; ".join(parts) + ". Different "
                "architectures cannot be merged; to use a common part, select it with a "
                "parameter filter (e.g. --include 'vision_model.*')."
            )
        bad = [
            f"{k!r}: {_shown(base.meta(k))} vs {_shown(other.meta(k))}"
            for k in keys_base
            if base.meta(k) != other.meta(k)
        ]
        if bad:
            raise InputError(
                f"shape/dtype mismatch between base and {label}: "
                + "; ".join(bad[:5])
                + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                + _dtype_fix(base, other, keys_base, label)
            )
    return keys_base


def _shown(meta: tuple[tuple[int, ...], DtypeLike]) -> str:
    """A tensor's shape and dtype as a user reads them: ``(3, 2) float16``."""
    return f"{meta[0]} {dtype_name(meta[1])}"


def _dtype_fix(base: TensorIndex, other: TensorIndex, keys: Sequence[str], label: str) -> str:
    """What to do when ``other`` differs from ``base`` in dtypes only (a task vector needs both
    in one dtype): convert it; otherwise the architectures differ."""
    shapes_agree = all(base.meta(k)[0] == other.meta(k)[0] for k in keys)
    dtypes = {other.meta(k)[1] for k in keys if base.meta(k)[1] != other.meta(k)[1]}
    if not shapes_agree or not dtypes:
        return ". Models of different shapes cannot be merged; give fine-tunes of this base"
    theirs = ", ".join(sorted(dtype_name(d) for d in dtypes))
    target = dtype_name(base.meta(keys[0])[1])
    return (
        f". The {label} ({other.label}) stores {theirs} where the base stores {target}; "
        f"convert it to the base's dtype once (python -c \"import torch, safetensors.torch as "
        f"s; s.save_file({{k: v.to(torch.{target}) if v.is_floating_point() else v for k, v in "
        f"s.load_file('IN').items()}}, 'OUT.safetensors')\"), or use a base of that dtype"
    )


def _zero_or(tau: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.zeros(shape) if tau is None else tau


class TaskVector:
    """A task vector: float32 tensors keyed by parameter name (insertion order is the layout)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors: dict[str, torch.Tensor] = {
            k: v.detach().to(torch.float32) for k, v in tensors.items()
        }

    # construction ----------------------------------------------------------------------------
    @classmethod
    def from_models(
        cls,
        base: ModelSource,
        finetuned: ModelSource,
        *,
        param_filter: ParamFilter = ALL_PARAMS,
        allow_pickle: bool = False,
        allow_nonfinite: bool = False,
    ) -> TaskVector:
        """Eq. 1: ``tau = theta_ft - theta_base`` over the selected floating-point parameters,
        computed in float32 one tensor at a time. ``finetuned`` may be a LoRA adapter directory:
        its task vector is then ``s B A`` per adapted module (zero elsewhere), computed from the
        factors, not by a subtraction."""
        b = TensorSource(base, allow_pickle, allow_nonfinite)
        f: ModelReader | None = None
        try:
            f = open_finetuned(
                finetuned, b, allow_pickle=allow_pickle, allow_nonfinite=allow_nonfinite
            )
            keys = selected_keys(b, [f], param_filter, "fine-tuned model")
            if isinstance(f, AdapterSource):
                return cls({k: _zero_or(f.tau(k), b.meta(k)[0]) for k in keys})
            return cls({k: f.get(k).to(torch.float32) - b.get(k).to(torch.float32) for k in keys})
        finally:
            b.close()
            if f is not None:
                f.close()

    @classmethod
    def load(cls, path: str | Path, *, allow_nonfinite: bool = False) -> TaskVector:
        """Read a task vector saved by :meth:`save` (safetensors; NaN and infinities refused
        unless ``allow_nonfinite``)."""
        return cls(load_state_dict(path, allow_nonfinite=allow_nonfinite))

    def save(self, path: str | Path) -> None:
        """Write as safetensors (tensor order preserved)."""
        save_state_dict(self.tensors, path, {"format": "rmtllmf-task-vector"})

    # arithmetic ------------------------------------------------------------------------------
    def _check_same(self, other: TaskVector) -> None:
        if list(self.tensors) != list(other.tensors):
            a, b = set(self.tensors), set(other.tensors)
            raise InputError(
                "task vectors have different parameters: only in the left: "
                f"{_names(sorted(a - b)) or '-'}; only in the right: {_names(sorted(b - a)) or '-'}"
            )
        for k, v in self.tensors.items():
            if v.shape != other.tensors[k].shape:
                raise InputError(f"task vectors disagree on the shape of {k!r}")

    def __add__(self, other: TaskVector) -> TaskVector:
        self._check_same(other)
        return TaskVector({k: v + other.tensors[k] for k, v in self.tensors.items()})

    def __sub__(self, other: TaskVector) -> TaskVector:
        self._check_same(other)
        return TaskVector({k: v - other.tensors[k] for k, v in self.tensors.items()})

    def __mul__(self, scale: float) -> TaskVector:
        return TaskVector({k: v * float(scale) for k, v in self.tensors.items()})

    __rmul__ = __mul__

    def __neg__(self) -> TaskVector:
        return self * -1.0

    def dot(self, other: TaskVector) -> float:
        """``<tau_a, tau_b>`` accumulated in float64."""
        self._check_same(other)
        return float(
            sum(
                torch.dot(v.reshape(-1).double(), other.tensors[k].reshape(-1).double())
                for k, v in self.tensors.items()
            )
        )

    def norm(self) -> float:
        """Euclidean norm ``||tau||``."""
        return float(np.sqrt(sum(float(v.double().pow(2).sum()) for v in self.tensors.values())))

    def cosine(self, other: TaskVector) -> float:
        """Cosine similarity ``<a, b> / (||a|| ||b||)`` (0 when either is zero)."""
        denom = self.norm() * other.norm()
        return self.dot(other) / denom if denom > 0 else 0.0

    # flat view for the channel ---------------------------------------------------------------
    @property
    def layout(self) -> VectorLayout:
        """The order and shapes used by :meth:`flatten`."""
        return VectorLayout(
            tuple(self.tensors), tuple(tuple(v.shape) for v in self.tensors.values())
        )

    def flatten(self) -> NDArray[np.float32]:
        """All tensors concatenated into one float32 array (order of :attr:`layout`)."""
        if not self.tensors:
            return np.zeros(0, dtype=np.float32)
        return torch.cat([v.reshape(-1) for v in self.tensors.values()]).numpy()

    @classmethod
    def from_flat(cls, flat: NDArray[np.floating], layout: VectorLayout) -> TaskVector:
        """Inverse of :meth:`flatten` (e.g. for a vector received over the channel)."""
        arr = np.asarray(flat)
        if arr.ndim != 1 or arr.size != layout.total:
            raise InputError(
                f"flat vector has shape {arr.shape}, the layout needs ({layout.total},)"
            )
        seg = layout.segments
        data = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        return cls(
            {
                name: data[seg[i] : seg[i + 1]].reshape(shape).clone()
                for i, (name, shape) in enumerate(zip(layout.names, layout.shapes, strict=True))
            }
        )

    def apply(
        self, base: Mapping[str, torch.Tensor], scale: float = 1.0
    ) -> dict[str, torch.Tensor]:
        """``theta_base + scale * tau``; parameters outside the vector are copied from the base,
        every tensor keeps the base's dtype."""
        out = {}
        for k, v in base.items():
            if k in self.tensors:
                out[k] = (v.to(torch.float32) + scale * self.tensors[k]).to(v.dtype)
            else:
                out[k] = v.clone()
        missing = [k for k in self.tensors if k not in base]
        if missing:
            raise InputError(f"the base model lacks task-vector parameters {_names(missing)}")
        return out


WIDE_BYTES = 1 << 30
"""The most memory :func:`cosine_matrix` spends on float64 copies of one tensor of every vector
at once; above it, it widens the tensor pair by pair (two copies at a time)."""


def cosine_matrix(vectors: Sequence[TaskVector]) -> NDArray[np.float64]:
    """Pairwise cosine similarities ``C[i, j] = cos(tau_i, tau_j)`` (Figs. 3-4 of the paper).

    The Gram matrix ``G[i, j] = <tau_i, tau_j>`` is accumulated in float64 tensor by tensor, in
    the vectors' key order, exactly as :meth:`TaskVector.dot` sums it (so to the last bit).
    Each tensor is widened to float64 once per vector, not once per pair, while the ``n``
    copies fit in :data:`WIDE_BYTES`; a larger tensor is widened pair by pair."""
    n = len(vectors)
    gram = np.zeros((n, n))
    if n:
        for v in vectors[1:]:
            vectors[0]._check_same(v)
        for k, first in vectors[0].tensors.items():
            if n * first.numel() * 8 <= WIDE_BYTES:
                wide = [v.tensors[k].reshape(-1).double() for v in vectors]
                for i in range(n):
                    for j in range(i, n):
                        gram[i, j] += float(torch.dot(wide[i], wide[j]))
                del wide
                continue
            for i in range(n):
                a = vectors[i].tensors[k].reshape(-1).double()
                for j in range(i, n):
                    b = a if j == i else vectors[j].tensors[k].reshape(-1).double()
                    gram[i, j] += float(torch.dot(a, b))
        gram = np.triu(gram) + np.triu(gram, 1).T
    norms = np.sqrt(np.clip(np.diag(gram), 0, None))
    denom = np.outer(norms, norms)
    result: NDArray[np.float64] = np.divide(gram, denom, out=np.zeros_like(gram), where=denom > 0)
    return result
