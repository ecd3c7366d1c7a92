"""The merge drivers: in memory (:func:`merge_task_vectors`) and from disk, streaming
(:func:`merge_checkpoints`), for any method of the registry.

Methods that need a statistic of a whole task vector (TIES's global threshold) declare it; the
drivers compute it exactly in two streaming passes (:mod:`rmtllmf.fusion.selection`) over the
method's ``vectors`` (the task vectors, or DARE's dropped ones). Sliceable methods (all four)
are merged from disk a slice of :data:`SLICE_ELEMENTS` entries at a time, after a prepass over
the slices where a method needs a statistic of the whole tensor (TIES's majority sign), so
memory stays at one slice per model whatever the model size.

The output is a ``.safetensors`` file, or, for a Hugging Face base directory, a directory that
``from_pretrained`` loads (sharded above ``max_shard_size``; :mod:`rmtllmf.fusion.hf_dir`). Both
are written beside the target and renamed into place: a failed merge writes nothing. Fine-tuned
models may be LoRA adapter directories (:mod:`rmtllmf.fusion.adapters`). NaN and infinities are
refused with the file and key named unless ``allow_nonfinite``: the streaming path checks each
input tensor as it reads it; the fused path checks what it wrote (a non-finite input entry of a
linear merge always gives a non-finite output entry) and then names the input that holds one,
before the output is published; an output that overflows from finite inputs is refused too.

The scaling ``lambda`` is configurable; :func:`select_lambda` runs the validation grid search of
tangent task arithmetic, ``lambda in linspace(0, 1, 21)`` by default.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from rmtllmf._io import atomic_output
from rmtllmf._lazy import lazy_module
from rmtllmf.errors import CheckpointError, InputError
from rmtllmf.fusion import methods as _methods  # noqa: F401  (registers the built-in methods)
from rmtllmf.fusion.adapters import is_adapter_dir
from rmtllmf.fusion.checkpoint import check_finite, write_safetensors_streaming
from rmtllmf.fusion.fast.fused import fused_linear_merge
from rmtllmf.fusion.hf_dir import (
    DEFAULT_MAX_SHARD_SIZE,
    MERGE_METADATA,
    Layout,
    OutputKind,
    ShardWriter,
    WrittenDirectory,
    check_base_dir,
    is_hf_model_dir,
    output_kind,
    parse_size,
    write_hf_directory,
)
from rmtllmf.fusion.method_registry import (
    MergeConfig,
    MergeMethod,
    TensorContext,
    get_method,
    linear_weights,
    merge_thresholds,
)
from rmtllmf.fusion.params import ALL_PARAMS, ParamFilter
from rmtllmf.fusion.safetensors_format import (
    DtypeLike,
    RawSafetensors,
    count_nonfinite_stored,
    dtype_name,
    resolve_files,
)
from rmtllmf.fusion.task_vector import (
    ModelReader,
    ModelSource,
    TaskVector,
    TensorSource,
    open_finetuned,
    selected_keys,
)

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")


def merge_task_vectors(
    base: Mapping[str, torch.Tensor],
    task_vectors: Sequence[TaskVector],
    config: MergeConfig,
    param_filter: ParamFilter = ALL_PARAMS,
) -> dict[str, torch.Tensor]:
    """Merge in memory: every task-vector parameter selected by ``param_filter`` gets
    ``base + delta``; everything else (unselected, integer buffers) is the base's, unchanged."""
    if not task_vectors:
        raise InputError("no task vectors to merge; give at least one")
    method = get_method(config.method)
    config.check_models(len(task_vectors))
    names = [k for k in task_vectors[0].tensors if param_filter.matches(k)]
    for tv in task_vectors[1:]:
        task_vectors[0]._check_same(tv)

    def taus(k: str) -> list[torch.Tensor]:
        return _weighted([tv.tensors[k] for tv in task_vectors], config.weights)

    thresholds = None
    if method.needs_thresholds(config):
        thresholds = merge_thresholds(
            method, config, lambda: ((k, 0, taus(k)) for k in names), len(task_vectors)
        )
    out = {k: v.clone() for k, v in base.items()}
    for k in names:
        if k not in base:
            raise InputError(f"the base model lacks parameter {k!r} of the task vectors")
        delta = method.fn(taus(k), TensorContext(k, config, thresholds))
        out[k] = (base[k].to(torch.float32) + delta).to(base[k].dtype)
    return out


def _weighted(taus: list[torch.Tensor], weights: Sequence[float] | None) -> list[torch.Tensor]:
    """``[w_q tau_q]`` (the task vectors themselves without weights)."""
    if weights is None:
        return taus
    return [w * t for w, t in zip(weights, taus, strict=True)]


@dataclass(frozen=True)
class MergeOutput:
    """What :func:`merge_checkpoints` wrote: a ``.safetensors`` file or a model directory."""

    path: Path
    kind: OutputKind
    directory: WrittenDirectory | None = None


def _checked_request(
    base: ModelSource,
    finetuned: Sequence[ModelSource],
    out: str | Path,
    config: MergeConfig,
    dtype: DtypeLike | None,
    *,
    force: bool,
    require_tokenizer: bool,
    max_shard_size: int | str,
) -> OutputKind:
    """What :func:`merge_checkpoints` checks before any work: models to merge, as many as the
    config's weights, a floating-point ``dtype``, the output path (:func:`output_kind`), and
    for a directory output a Hugging Face base directory (with a tokenizer where
    ``require_tokenizer``) and a valid ``max_shard_size``."""
    if not finetuned:
        raise InputError("no fine-tuned models to merge; give at least one (--models ...)")
    config.check_models(len(finetuned))
    if dtype is not None and not dtype.is_floating_point:
        raise InputError(f"output dtype {dtype} is not a floating-point dtype (--dtype)")
    inputs = [s for s in (base, *finetuned) if not isinstance(s, Mapping)]
    kind = output_kind(out, inputs, force=force)
    if kind == "file":
        return kind
    if isinstance(base, Mapping) or not is_hf_model_dir(base):
        what = "an in-memory state dict" if isinstance(base, Mapping) else f"{base}"
        raise InputError(
            f"--out {out} is a directory, written for from_pretrained, which needs the base to be "
            f"a Hugging Face model directory with config.json, but the base is {what}; give "
            "--out a .safetensors file, or a base directory with config.json"
        )
    check_base_dir(base, require_tokenizer=require_tokenizer)
    parse_size(max_shard_size)
    return kind


def merge_checkpoints(
    base: ModelSource,
    finetuned: Sequence[ModelSource],
    out: str | Path,
    config: MergeConfig,
    param_filter: ParamFilter = ALL_PARAMS,
    *,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
    dtype: DtypeLike | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    extra_files: Mapping[str, str] | None = None,
    require_tokenizer: bool = False,
    force: bool = False,
) -> MergeOutput:
    """Merge checkpoints from disk, a slice of one tensor per model at a time.

    ``out`` is a ``.safetensors`` file, or a directory for a Hugging Face base directory (one
    that has ``config.json``): the directory then loads with ``from_pretrained``, its weights
    sharded above ``max_shard_size``, the base's config and tokenizer / processor files carried
    over and ``extra_files`` (name -> text) added (:func:`~rmtllmf.fusion.hf_dir.
    write_hf_directory`). The output path is checked before any work
    (:func:`~rmtllmf.fusion.hf_dir.output_kind`: never one of the inputs, never a file or a
    directory that no merge wrote unless ``force``; what a user added to an earlier output
    directory is kept).

    The weights have exactly the base's keys, shapes and dtypes (floating-point tensors cast to
    ``dtype`` if given); parameters not selected (and all integer buffers) are copied from the
    base. Fine-tuned models may be LoRA adapter directories. NaN or infinite values are refused
    (see the module docs) unless ``allow_nonfinite``.
    """
    kind = _checked_request(
        base,
        finetuned,
        out,
        config,
        dtype,
        force=force,
        require_tokenizer=require_tokenizer,
        max_shard_size=max_shard_size,
    )
    target = Path(out)
    metadata = {"format": "pt", MERGE_METADATA: config.model_dump_json()}
    with ExitStack() as stack:
        plan = _fused_plan(base, finetuned, config, param_filter, dtype, metadata, stack)
        if plan is None:
            plan = _streaming_plan(
                base, finetuned, config, param_filter, dtype, metadata, stack,
                allow_pickle=allow_pickle, allow_nonfinite=allow_nonfinite,
            )  # fmt: skip
        layout, write, readers = plan

        def write_checked(path: Path, keys: Sequence[str]) -> None:
            write(path, keys)
            if not allow_nonfinite:
                _check_written(path, keys, readers)

        try:
            if kind == "file":
                with atomic_output(target) as tmp:
                    write_checked(tmp, [k for k, _, _ in layout])
                return MergeOutput(target, "file")
            assert not isinstance(base, Mapping)
            written = write_hf_directory(
                target,
                base,
                layout,
                write_checked,
                max_shard_size=max_shard_size,
                extra_files=extra_files,
                dtype=dtype,
                require_tokenizer=require_tokenizer,
                command="merge",
                force=force,
            )
        except (OSError, CheckpointError) as exc:
            if not _disk_full(exc):
                raise
            raise InputError(
                f"--out {out}: the disk that holds {target.parent} is full (no space left on "
                "device; nothing was written); free space there or give --out on another disk"
            ) from exc
        return MergeOutput(target, "directory", written)


def _disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception that caused it, says the disk (or the quota) is full."""
    full = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in full:
            return True
        exc = exc.__cause__
    return False


_Readers = Callable[[], list[tuple[str, ModelReader]]]
"""Opens the inputs (``(role, reader)``, base first) to find which one holds a non-finite
value; called only when the output has one."""
_Plan = tuple[Layout, ShardWriter, _Readers]


def _fused_plan(
    base: ModelSource,
    finetuned: Sequence[ModelSource],
    config: MergeConfig,
    param_filter: ParamFilter,
    dtype: DtypeLike | None,
    metadata: dict[str, str],
    stack: ExitStack,
) -> _Plan | None:
    """The bandwidth path of a linear merge of single safetensors files (base first), whose
    file headers serve the checks too (each header is read once); ``None`` where it does not
    apply (a non-linear method, sharded inputs, adapters, a cast, no positional I/O)."""
    weights = linear_weights(config, len(finetuned))
    positional_io = hasattr(os, "preadv") and hasattr(os, "pwrite")  # not on Windows
    if weights is None or not positional_io or any(is_adapter_dir(f) for f in finetuned):
        return None
    files = _single_safetensors(base, finetuned)
    if files is None:
        return None
    raws = [stack.enter_context(RawSafetensors(f)) for f in files]
    order = raws[0].keys()
    layout = [(k, raws[0].entries[k][1], raws[0].entries[k][0]) for k in order]
    if dtype is not None and any(
        dt.is_floating_point and dt.name != dtype_name(dtype) for _, _, dt in layout
    ):
        for raw in reversed(raws):
            raw.close()
        return None
    keys = set(selected_keys(raws[0], raws[1:], param_filter, "fine-tuned model"))
    threads = min(4, os.cpu_count() or 1)
    assert weights is not None

    def write(path: Path, shard: Sequence[str]) -> None:
        fused_linear_merge(raws, path, shard, keys, weights, metadata, threads)

    def readers() -> list[tuple[str, ModelReader]]:
        roles = ["base", *(f"fine-tuned model #{i}" for i in range(1, len(files)))]
        opened: list[tuple[str, ModelReader]] = []
        for role, file in zip(roles, files, strict=True):
            reader = TensorSource(file, False)
            stack.callback(reader.close)
            opened.append((role, reader))
        return opened

    return layout, write, readers


def _streaming_plan(
    base: ModelSource,
    finetuned: Sequence[ModelSource],
    config: MergeConfig,
    param_filter: ParamFilter,
    dtype: DtypeLike | None,
    metadata: dict[str, str],
    stack: ExitStack,
    *,
    allow_pickle: bool,
    allow_nonfinite: bool,
) -> _Plan:
    """Any method, tensor by tensor (slice by slice where the method allows), after the
    method's global thresholds where it needs them (computed here, before any output)."""
    b = TensorSource(base, allow_pickle, allow_nonfinite)
    stack.callback(b.close)
    fts: list[ModelReader] = []
    for f in finetuned:
        reader = open_finetuned(f, b, allow_pickle=allow_pickle, allow_nonfinite=allow_nonfinite)
        stack.callback(reader.close)
        fts.append(reader)
    method = get_method(config.method)
    keys = set(selected_keys(b, fts, param_filter, "fine-tuned model"))
    order = b.keys()
    merged = [k for k in order if k in keys]
    weights = config.weights
    thresholds = None
    if method.needs_thresholds(config):

        def slices() -> Iterator[tuple[str, int, list[torch.Tensor]]]:
            for k in merged:
                for offset, _, taus in _tau_slices(b.get(k), [f.get(k) for f in fts], weights):
                    yield k, offset, taus

        thresholds = merge_thresholds(method, config, slices, len(fts))

    target = None if dtype is None else getattr(torch, dtype_name(dtype))

    def out_dtype(t: torch.dtype) -> torch.dtype:
        return target if target is not None and t.is_floating_point else t

    def tensors(
        shard: Sequence[str],
    ) -> Iterator[tuple[str, torch.Tensor | Iterator[torch.Tensor]]]:
        for k in shard:
            base_t = b.get(k)
            ctx = TensorContext(k, config, thresholds)
            to = out_dtype(base_t.dtype)
            if k not in keys:
                yield k, base_t.to(to)
            elif method.sliceable:
                yield k, _merged_slices(method, base_t, [f.get(k) for f in fts], ctx, weights, to)
            else:
                taus = _weighted([f.get(k).float() - base_t.float() for f in fts], weights)
                yield k, (base_t.float() + method.fn(taus, ctx)).to(to)

    layout = [(k, shape, out_dtype(dt)) for k in order for shape, dt in [b.meta(k)]]
    shapes = {k: (shape, dt) for k, shape, dt in layout}

    def write(path: Path, shard: Sequence[str]) -> None:
        entries = [(k, *shapes[k]) for k in shard]
        write_safetensors_streaming(path, entries, tensors(shard), metadata)

    def readers() -> list[tuple[str, ModelReader]]:
        return [("base", b), *((f"fine-tuned model #{i}", f) for i, f in enumerate(fts, 1))]

    return layout, write, readers


def _check_written(path: Path, keys: Sequence[str], readers: _Readers) -> None:
    """Refuse an output with a NaN or infinite entry, naming the input file and key that hold
    one (or, if none does, the overflow), before the output is published. The file is read in
    place, a chunk at a time (:func:`count_nonfinite_stored`: no torch)."""
    with RawSafetensors(path) as written:
        bad = count_nonfinite_stored(written, keys)
        if bad:
            key = next(k for k in keys if k in bad)
            _blame(key, written.entries[key][0], readers())


def _blame(key: str, dtype: DtypeLike, readers: list[tuple[str, ModelReader]]) -> None:
    """Raise for the first input whose tensor ``key`` is not finite (a checkpoint file raises its
    own error, naming the file), else for an overflow of the merge itself."""
    for role, reader in readers:
        check_finite(reader.get(key), f"{role} ({reader.label})", key)
    wider = (
        "" if dtype_name(dtype) in ("float32", "float64") else ", write float32 (--dtype float32)"
    )
    raise CheckpointError(
        f"the merged tensor {key!r} has NaN or inf entries in {dtype_name(dtype)} "
        f"although every input is finite: the merge overflows; lower --lambda or the "
        f"weights{wider}, or pass --allow-nonfinite to keep it"
    )


SLICE_ELEMENTS = 1 << 18
"""Entries per slice of a sliceable merge: 1 MiB per model in float32, whatever the tensor
(a 128k-token LLM embedding is 2 GiB per model in float32), so a merge's memory stays at one
slice per model (``tests/test_merge_memory.py`` bounds it)."""


def _tau_slices(
    base: torch.Tensor, models: Sequence[torch.Tensor], weights: Sequence[float] | None = None
) -> Iterator[tuple[int, torch.Tensor, list[torch.Tensor]]]:
    """``(offset, theta_base, [w_1 tau_1, ..., w_N tau_N])`` of one parameter in float32,
    :data:`SLICE_ELEMENTS` flat entries at a time (unweighted without ``weights``)."""
    base_flat = base.reshape(-1)
    flats = [m.reshape(-1) for m in models]
    for start in range(0, base_flat.numel(), SLICE_ELEMENTS):
        part = slice(start, start + SLICE_ELEMENTS)
        b = base_flat[part].float()
        yield start, b, _weighted([m[part].float() - b for m in flats], weights)


def _merged_slices(
    method: MergeMethod,
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    ctx: TensorContext,
    weights: Sequence[float] | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[torch.Tensor]:
    """``theta_base + delta`` of one parameter a slice at a time, for a sliceable ``method``
    (after its prepass over the slices), in ``dtype`` (default the base's): each slice is
    computed as the whole tensor would be."""
    if method.prepass is not None:
        slices = _tau_slices(base, models, weights)
        ctx = method.prepass(((o, taus) for o, _, taus in slices), ctx)
    for offset, b, taus in _tau_slices(base, models, weights):
        yield (b + method.fn(taus, replace(ctx, offset=offset))).to(dtype or base.dtype)


def _single_safetensors(base: ModelSource, finetuned: Sequence[ModelSource]) -> list[Path] | None:
    """The one safetensors file behind each model, or ``None`` if any model is not one."""
    files: list[Path] = []
    for s in [base, *finetuned]:
        if isinstance(s, Mapping):
            return None
        found = resolve_files(s)
        if len(found) != 1 or found[0].suffix != ".safetensors":
            return None
        files.append(found[0])
    return files


@dataclass(frozen=True)
class LambdaSearch:
    """Result of a validation grid search over ``lambda``."""

    best: float
    grid: NDArray[np.float64]
    scores: NDArray[np.float64]


def select_lambda(
    score: Callable[[float], float], grid: Sequence[float] | None = None
) -> LambdaSearch:
    """Pick ``lambda`` maximising ``score`` (a validation metric; never test data) over ``grid``
    (default ``linspace(0, 1, 21)``); ties go to the smallest ``lambda``."""
    points = lambda_values(grid)
    scores = np.array([float(score(lam)) for lam in points])
    return LambdaSearch(points[int(np.argmax(scores))], np.array(points), scores)


def lambda_values(grid: Sequence[float] | None = None) -> list[float]:
    """The points of :func:`select_lambda`'s grid (default ``linspace(0, 1, 21)``), as the
    floats ``score`` is called with."""
    values = np.linspace(0.0, 1.0, 21) if grid is None else np.asarray(grid, dtype=np.float64)
    if values.size == 0:
        raise InputError("the lambda grid is empty")
    return [float(lam) for lam in values]
