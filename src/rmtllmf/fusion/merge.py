"""The merge drivers: in memory (:func:`merge_task_vectors`) and from disk, streaming
(:func:`merge_checkpoints`), for any method of the registry.

Methods that need a statistic of a whole task vector (TIES's global threshold) declare it; the
drivers compute it exactly in two streaming passes (:mod:`rmtllmf.fusion.selection`) over the
method's ``vectors`` (the task vectors, or DARE's dropped ones). Sliceable methods (all four)
are merged from disk a slice of :data:`SLICE_ELEMENTS` entries at a time, after a prepass over
the slices where a method needs a statistic of the whole tensor (TIES's majority sign), so
memory stays at one slice per model whatever the model size.

The scaling ``lambda`` is configurable; :func:`select_lambda` runs the validation grid search of
tangent task arithmetic, ``lambda in linspace(0, 1, 21)`` by default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from rmtllmf.errors import InputError
from rmtllmf.fusion import methods as _methods  # noqa: F401  (registers the built-in methods)
from rmtllmf.fusion.checkpoint import RawSafetensors, resolve_files, write_safetensors_streaming
from rmtllmf.fusion.fast.fused import fused_linear_merge
from rmtllmf.fusion.params import ALL_PARAMS, ParamFilter
from rmtllmf.fusion.registry import (
    MergeConfig,
    MergeMethod,
    TensorContext,
    get_method,
    linear_weights,
    merge_thresholds,
)
from rmtllmf.fusion.task_vector import ModelSource, TaskVector, TensorSource, selected_keys


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
    names = [k for k in task_vectors[0].tensors if param_filter.matches(k)]
    for tv in task_vectors[1:]:
        task_vectors[0]._check_same(tv)
    thresholds = None
    if method.needs_thresholds(config):
        thresholds = merge_thresholds(
            method,
            config,
            lambda: ((k, 0, [tv.tensors[k] for tv in task_vectors]) for k in names),
            len(task_vectors),
        )
    out = {k: v.clone() for k, v in base.items()}
    for k in names:
        if k not in base:
            raise InputError(f"the base model lacks parameter {k!r} of the task vectors")
        delta = method.fn(
            [tv.tensors[k] for tv in task_vectors], TensorContext(k, config, thresholds)
        )
        out[k] = (base[k].to(torch.float32) + delta).to(base[k].dtype)
    return out


def merge_checkpoints(
    base: ModelSource,
    finetuned: Sequence[ModelSource],
    out: str | Path,
    config: MergeConfig,
    param_filter: ParamFilter = ALL_PARAMS,
    *,
    allow_pickle: bool = False,
) -> None:
    """Merge checkpoints from disk into a safetensors file, a slice of one tensor per model at a
    time.

    The output has exactly the base's keys, shapes and dtypes; parameters not selected (and all
    integer buffers) are copied from the base.
    """
    if not finetuned:
        raise InputError("no fine-tuned models to merge; give at least one (--models ...)")
    metadata = {"format": "pt", "rmtllmf_merge": config.model_dump_json()}
    weights = linear_weights(config, len(finetuned))
    positional_io = hasattr(os, "preadv") and hasattr(os, "pwrite")  # not on Windows
    files = _single_safetensors(base, finetuned) if weights is not None and positional_io else None
    if weights is not None and files is not None:
        _merge_linear_files(files, Path(out), weights, metadata, param_filter)
        return
    b = TensorSource(base, allow_pickle)
    fts = [TensorSource(f, allow_pickle) for f in finetuned]
    try:
        _merge_streaming(b, fts, out, config, metadata, param_filter)
    finally:
        b.close()
        for f in fts:
            f.close()


def _merge_linear_files(
    files: Sequence[Path],
    out: Path,
    weights: Sequence[float],
    metadata: dict[str, str],
    param_filter: ParamFilter,
) -> None:
    """A linear merge of safetensors files (base first): the bandwidth path, whose file headers
    serve the checks too (each header is read once)."""
    with ExitStack() as stack:
        raws = [stack.enter_context(RawSafetensors(f)) for f in files]
        keys = set(selected_keys(raws[0], raws[1:], param_filter, "fine-tuned model"))
        threads = min(4, os.cpu_count() or 1)
        fused_linear_merge(raws, out, raws[0].keys(), keys, weights, metadata, threads)


def _merge_streaming(
    b: TensorSource,
    fts: Sequence[TensorSource],
    out: str | Path,
    config: MergeConfig,
    metadata: dict[str, str],
    param_filter: ParamFilter,
) -> None:
    """Any method, tensor by tensor (slice by slice where the method allows), after the
    method's global thresholds where it needs them."""
    method = get_method(config.method)
    keys = set(selected_keys(b, fts, param_filter, "fine-tuned model"))
    order = b.keys()
    merged = [k for k in order if k in keys]
    thresholds = None
    if method.needs_thresholds(config):

        def slices() -> Iterator[tuple[str, int, list[torch.Tensor]]]:
            for k in merged:
                for offset, _, taus in _tau_slices(b.get(k), [f.get(k) for f in fts]):
                    yield k, offset, taus

        thresholds = merge_thresholds(method, config, slices, len(fts))

    def tensors() -> Iterator[tuple[str, torch.Tensor | Iterator[torch.Tensor]]]:
        for k in order:
            base_t = b.get(k)
            ctx = TensorContext(k, config, thresholds)
            if k not in keys:
                yield k, base_t
            elif method.sliceable:
                yield k, _merged_slices(method, base_t, [f.get(k) for f in fts], ctx)
            else:
                taus = [f.get(k).float() - base_t.float() for f in fts]
                yield k, (base_t.float() + method.fn(taus, ctx)).to(base_t.dtype)

    layout = [(k, *b.meta(k)) for k in order]
    write_safetensors_streaming(out, layout, tensors(), metadata)


SLICE_ELEMENTS = 1 << 18
"""Entries per slice of a sliceable merge: 1 MiB per model in float32, whatever the tensor
(a 128k-token LLM embedding is 2 GiB per model in float32). Task arithmetic of 4 sharded
checkpoints around one 64 MiB tensor peaked at 8.1 MiB of anonymous memory with these slices,
448 MiB unsliced (``tests/test_merge_memory.py``)."""


def _tau_slices(
    base: torch.Tensor, models: Sequence[torch.Tensor]
) -> Iterator[tuple[int, torch.Tensor, list[torch.Tensor]]]:
    """``(offset, theta_base, [tau_1, ..., tau_N])`` of one parameter in float32,
    :data:`SLICE_ELEMENTS` flat entries at a time."""
    base_flat = base.reshape(-1)
    flats = [m.reshape(-1) for m in models]
    for start in range(0, base_flat.numel(), SLICE_ELEMENTS):
        part = slice(start, start + SLICE_ELEMENTS)
        b = base_flat[part].float()
        yield start, b, [m[part].float() - b for m in flats]


def _merged_slices(
    method: MergeMethod, base: torch.Tensor, models: Sequence[torch.Tensor], ctx: TensorContext
) -> Iterator[torch.Tensor]:
    """``theta_base + delta`` of one parameter a slice at a time, for a sliceable ``method``
    (after its prepass over the slices): each slice is computed as the whole tensor would be."""
    if method.prepass is not None:
        ctx = method.prepass(((o, taus) for o, _, taus in _tau_slices(base, models)), ctx)
    for offset, b, taus in _tau_slices(base, models):
        yield (b + method.fn(taus, replace(ctx, offset=offset))).to(base.dtype)


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
    values = np.linspace(0.0, 1.0, 21) if grid is None else np.asarray(grid, dtype=np.float64)
    if values.size == 0:
        raise InputError("the lambda grid is empty")
    scores = np.array([float(score(float(lam))) for lam in values])
    return LambdaSearch(float(values[int(np.argmax(scores))]), values, scores)
