"""Merge methods: one registry, one signature, tensor by tensor.

Every method turns the task-vector slices of one parameter, ``[tau_1[k], ..., tau_N[k]]``, into
the merged delta for that parameter; the merged model is ``theta_base[k] + delta[k]``:

* ``task-arithmetic`` (Ilharco et al. 2023; paper eq. 6): ``delta = lambda * sum_q tau_q``.
* ``average``: ``delta = mean_q tau_q``, i.e. the simple average of the fine-tuned weights
  (Wortsman et al. 2022, model soups).
* ``ties`` (Yadav et al. 2023): trim each ``tau_q`` to its ``density`` fraction of largest
  magnitudes (threshold over the whole task vector, as in the paper and FusionBench), elect a sign
  per entry from the sum of the trimmed values (an exact zero takes the majority sign, FusionBench's
  ``resolve_zero_signs``), take the disjoint mean (or sum / max) of the entries that agree with it,
  and scale by ``lambda``.
* ``dare`` (Yu et al. 2024): drop each entry of ``tau_q`` with probability ``p`` and rescale the
  rest by ``1/(1-p)``, then combine with task arithmetic or TIES (``dare_combine``; TIES then
  trims, elects and merges the dropped vectors, its thresholds taken over their magnitudes, as
  in FusionBench's DARE-TIES). Drops are seeded per (task, parameter) and drawn by position in
  blocks of 4096 entries, so a merge is reproducible in any order and a tensor merged in slices
  drops what it would drop whole.

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
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rmtllmf.errors import InputError
from rmtllmf.fusion.checkpoint import RawSafetensors, resolve_files, write_safetensors_streaming
from rmtllmf.fusion.fast.fused import fused_linear_merge
from rmtllmf.fusion.params import ALL_PARAMS, ParamFilter
from rmtllmf.fusion.selection import ties_thresholds
from rmtllmf.fusion.task_vector import ModelSource, TaskVector, TensorSource, selected_keys


class NoOptions(BaseModel):
    """A method without options of its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TiesOptions(BaseModel):
    """TIES's options: the fraction of each task vector's entries kept and the disjoint merge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    density: float = Field(0.2, gt=0.0, le=1.0, description="fraction of entries kept")
    merge: Literal["mean", "sum", "max"] = "mean"


class DareOptions(BaseModel):
    """DARE's options: the drop probability, the combiner and, for TIES, its options."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    drop_rate: float = Field(0.5, ge=0.0, lt=1.0, description="probability p of dropping")
    combine: Literal["task-arithmetic", "ties"] = "task-arithmetic"
    density: float = Field(0.2, gt=0.0, le=1.0, description="TIES combiner: entries kept")
    merge: Literal["mean", "sum", "max"] = "mean"
    seed: int = 0


_Options = TypeVar("_Options", bound=BaseModel)


class MergeConfig(BaseModel):
    """How to merge (frozen). ``scaling`` is the paper's ``lambda_N``; ``options`` are the
    method's own parameters, validated by its registry entry (its ``options`` model) and stored
    resolved, defaults filled in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = "task-arithmetic"
    scaling: float = Field(0.3, ge=0.0, description="lambda for task-arithmetic / ties / dare")
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _resolve_options(self) -> Self:
        entry = get_method(self.method)
        try:
            resolved = entry.options.model_validate(self.options).model_dump()
        except ValidationError as exc:
            takes = ", ".join(entry.options.model_fields) or "no options"
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(
                f"merge method {self.method!r} takes {takes}; fix its options ({problems})"
            ) from None
        object.__setattr__(self, "options", resolved)
        return self

    def parsed(self, kind: type[_Options]) -> _Options:
        """The options as the method's typed model."""
        return kind.model_validate(self.options)


@dataclass(frozen=True)
class TensorContext:
    """What a method may know about the parameter being merged."""

    name: str
    config: MergeConfig
    thresholds: tuple[float, ...] | None = None
    majority: float | None = None
    """TIES's sign for entries whose elected sum is exactly 0, taken over the whole tensor; set
    by its prepass when the tensor is merged in slices, else computed from the tensor given."""
    offset: int = 0
    """Flat index, in the parameter, of the first entry of the tensors given (a slice's start):
    DARE draws its drop masks by position, so that slices drop what the whole tensor would."""


MergeFn = Callable[[Sequence[torch.Tensor], TensorContext], torch.Tensor]
VectorsFn = Callable[[Sequence[torch.Tensor], TensorContext], torch.Tensor]
"""The per-model vectors a method trims and elects over, stacked ``(N, ...)``, from the task
vectors' slices ``[tau_1, ..., tau_N]`` at ``ctx.offset`` of parameter ``ctx.name``."""
Prepass = Callable[[Iterable[tuple[int, Sequence[torch.Tensor]]], TensorContext], TensorContext]
"""Reads a parameter's task-vector slices ``(offset, [tau_1, ..., tau_N])`` once and returns the
context with what the method needs of the whole tensor (TIES: the majority sign)."""


def stacked_task_vectors(taus: Sequence[torch.Tensor], ctx: TensorContext) -> torch.Tensor:
    """The task vectors themselves, stacked: what TIES trims and elects over."""
    return torch.stack(list(taus))


LinearWeights = Callable[[MergeConfig, int], list[float]]
"""``(config, N) -> [w_1, ..., w_N]`` of a method linear in the models (:func:`linear_weights`)."""


@dataclass(frozen=True)
class MergeMethod:
    """A registry entry, everything about a method: the per-tensor function, its options model,
    whether it needs global TIES thresholds (taken over the magnitudes of ``vectors``), whether
    it is sliceable (after the optional ``prepass`` over a parameter's slices, the merged delta
    of any slice of its entries is that slice of its merged delta, so a driver may merge a large
    tensor slice by slice) and, for a method linear in the models, its weights."""

    fn: MergeFn
    needs_thresholds: Callable[[MergeConfig], bool]
    summary: str
    sliceable: bool = False
    prepass: Prepass | None = None
    vectors: VectorsFn = stacked_task_vectors
    options: type[BaseModel] = NoOptions
    linear: LinearWeights | None = None


MERGE_METHODS: dict[str, MergeMethod] = {}


def merge_thresholds(
    method: MergeMethod,
    config: MergeConfig,
    slices: Callable[[], Iterable[tuple[str, int, Sequence[torch.Tensor]]]],
    n_models: int,
) -> tuple[float, ...]:
    """Each model's TIES threshold over the magnitudes of ``method.vectors``, from a replayable
    stream of task-vector slices ``(parameter, offset, [tau_1, ..., tau_N])``."""

    def magnitudes() -> Iterator[list[torch.Tensor]]:
        for name, offset, taus in slices():
            yield list(method.vectors(taus, TensorContext(name, config, offset=offset)).abs())

    density = float(config.options["density"])
    return ties_thresholds(magnitudes, n_models, density)


def register(
    name: str,
    summary: str,
    needs_thresholds: Callable[[MergeConfig], bool] = lambda c: False,
    *,
    sliceable: bool = False,
    prepass: Prepass | None = None,
    vectors: VectorsFn = stacked_task_vectors,
    options: type[BaseModel] = NoOptions,
    linear: LinearWeights | None = None,
) -> Callable[[MergeFn], MergeFn]:
    """Add a merge method to the registry under ``name`` (see :class:`MergeMethod`)."""

    def wrap(fn: MergeFn) -> MergeFn:
        MERGE_METHODS[name] = MergeMethod(
            fn, needs_thresholds, summary, sliceable, prepass, vectors, options, linear
        )
        return fn

    return wrap


def get_method(name: str) -> MergeMethod:
    """Look up a merge method; unknown names list the known ones."""
    if name not in MERGE_METHODS:
        raise InputError(f"unknown merge method {name!r}; choose one of {sorted(MERGE_METHODS)}")
    return MERGE_METHODS[name]


@register(
    "task-arithmetic",
    "theta_base + lambda * sum_q tau_q (eq. 6)",
    sliceable=True,
    linear=lambda config, n: [config.scaling] * n,
)
def task_arithmetic(taus: Sequence[torch.Tensor], ctx: TensorContext) -> torch.Tensor:
    """``lambda * sum_q tau_q``."""
    return ctx.config.scaling * torch.stack(list(taus)).sum(dim=0)


@register(
    "average",
    "mean of the fine-tuned weights: theta_base + mean_q tau_q",
    sliceable=True,
    linear=lambda config, n: [1.0 / n] * n,
)
def average(taus: Sequence[torch.Tensor], ctx: TensorContext) -> torch.Tensor:
    """``mean_q tau_q``."""
    return torch.stack(list(taus)).mean(dim=0)


def _ties_trim(stacked: torch.Tensor, thresholds: Sequence[float] | None) -> torch.Tensor:
    """Zero the entries of each ``stacked[q]`` below its model's magnitude threshold."""
    if thresholds is None:
        return stacked
    thr = torch.tensor(thresholds, dtype=stacked.dtype).reshape(-1, *([1] * (stacked.dim() - 1)))
    return stacked * (stacked.abs() >= thr)


def ties_combine(
    stacked: torch.Tensor,
    thresholds: Sequence[float] | None,
    merge: str,
    majority: float | None = None,
) -> torch.Tensor:
    """TIES trim / elect / disjoint merge of ``stacked`` (shape ``(N, ...)``), unscaled. An entry
    whose elected sum is exactly 0 takes ``majority``, the sign of the sum of the elected signs
    (of ``stacked`` unless given: a slice takes its whole tensor's)."""
    stacked = _ties_trim(stacked, thresholds)
    sign = torch.sign(stacked.sum(dim=0))
    tie_break = torch.sign(sign.sum()) if majority is None else torch.tensor(majority)
    sign = torch.where(sign == 0, tie_break.to(sign.dtype), sign)
    agree = torch.where(sign > 0, stacked > 0, stacked < 0)
    selected = stacked * agree
    if merge == "sum":
        return selected.sum(dim=0)
    if merge == "max":
        return selected.abs().max(dim=0).values * sign
    count = agree.sum(dim=0).clamp(min=1)
    return selected.sum(dim=0) / count


def _majority(stacks: Iterable[torch.Tensor], ctx: TensorContext) -> TensorContext:
    """``ctx`` with the majority sign of one parameter: the sign of the sum of the elected signs
    of its trimmed slices (each stacked ``(N, n)``), counted exactly in integers."""
    total = 0
    for stacked in stacks:
        trimmed = _ties_trim(stacked, ctx.thresholds)
        total += int(torch.sign(trimmed.sum(dim=0)).sum())
    return replace(ctx, majority=float((total > 0) - (total < 0)))


def ties_majority(
    slices: Iterable[tuple[int, Sequence[torch.Tensor]]], ctx: TensorContext
) -> TensorContext:
    """TIES's prepass: the majority sign of one parameter from its slices."""
    return _majority((stacked_task_vectors(taus, ctx) for _, taus in slices), ctx)


@register(
    "ties",
    "trim top-density, elect sign, disjoint merge (Yadav et al. 2023)",
    needs_thresholds=lambda c: c.parsed(TiesOptions).density < 1.0,
    sliceable=True,
    prepass=ties_majority,
    options=TiesOptions,
)
def ties(taus: Sequence[torch.Tensor], ctx: TensorContext) -> torch.Tensor:
    """``lambda * disjoint_merge(elect(trim(tau_q)))``."""
    merge = ctx.config.parsed(TiesOptions).merge
    combined = ties_combine(stacked_task_vectors(taus, ctx), ctx.thresholds, merge, ctx.majority)
    return ctx.config.scaling * combined


DARE_BLOCK = 1 << 12
"""Entries per block of DARE's uniform draws: block ``j`` of a (task, parameter) comes from its
own generator, so a slice's mask depends on its position only, not on how a tensor is cut."""


def _dare_uniforms(n: int, offset: int, seed: int) -> torch.Tensor:
    """Uniforms for flat entries ``offset .. offset + n - 1`` of a (task, parameter)."""
    if n == 0:
        return torch.empty(0)
    first, last = offset // DARE_BLOCK, (offset + n - 1) // DARE_BLOCK
    blocks = [
        torch.rand(
            DARE_BLOCK,
            generator=torch.Generator().manual_seed((seed + j * 0x9E3779B97F4A7C15) % 2**63),
        )
        for j in range(first, last + 1)
    ]
    start = offset - first * DARE_BLOCK
    return torch.cat(blocks)[start : start + n]


def _dare_drop(tau: torch.Tensor, p: float, seed: int, offset: int) -> torch.Tensor:
    """``tau`` with each entry dropped with probability ``p`` and the rest scaled by 1/(1-p)."""
    if p == 0.0:
        return tau
    keep = (_dare_uniforms(tau.numel(), offset, seed) >= p).reshape(tau.shape)
    return tau * keep / (1.0 - p)


def dare_seed(config: MergeConfig, task: int, name: str) -> int:
    """Seed of the drop mask of one (task, parameter): stable across runs and orders."""
    seed = config.parsed(DareOptions).seed
    return (seed * 1_000_003 + task * 7919 + zlib.crc32(name.encode())) % (2**63)


def _dare_dropped(taus: Sequence[torch.Tensor], ctx: TensorContext) -> torch.Tensor:
    """The task vectors' entries at ``ctx.offset`` on, dropped and rescaled, stacked."""
    cfg = ctx.config
    p = cfg.parsed(DareOptions).drop_rate
    return torch.stack(
        [_dare_drop(t, p, dare_seed(cfg, i, ctx.name), ctx.offset) for i, t in enumerate(taus)]
    )


def dare_majority(
    slices: Iterable[tuple[int, Sequence[torch.Tensor]]], ctx: TensorContext
) -> TensorContext:
    """DARE's prepass: with TIES as the combiner, the majority sign of the dropped slices."""
    if ctx.config.parsed(DareOptions).combine != "ties":
        return ctx
    return _majority((_dare_dropped(taus, replace(ctx, offset=o)) for o, taus in slices), ctx)


@register(
    "dare",
    "drop-and-rescale, then task arithmetic or TIES (Yu et al. 2024)",
    needs_thresholds=lambda c: (o := c.parsed(DareOptions)).combine == "ties" and o.density < 1.0,
    sliceable=True,
    prepass=dare_majority,
    vectors=_dare_dropped,
    options=DareOptions,
)
def dare(taus: Sequence[torch.Tensor], ctx: TensorContext) -> torch.Tensor:
    """Drop with probability ``p``, rescale by ``1/(1-p)``, combine."""
    cfg, o = ctx.config, ctx.config.parsed(DareOptions)
    dropped = _dare_dropped(taus, ctx)
    if o.combine == "ties":
        return cfg.scaling * ties_combine(dropped, ctx.thresholds, o.merge, ctx.majority)
    return cfg.scaling * dropped.sum(dim=0)


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


def linear_weights(config: MergeConfig, n_models: int) -> list[float] | None:
    """Per-model weights ``w_q`` when the method is linear in the models, i.e.
    ``merged = (1 - sum_q w_q) theta_base + sum_q w_q theta_q`` (task arithmetic: ``w = lambda``;
    average: ``w = 1/N``), as its registry entry declares; ``None`` for non-linear methods."""
    linear = get_method(config.method).linear
    return None if linear is None else linear(config, n_models)


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
    method = get_method(config.method)
    metadata = {"format": "pt", "rmtllmf_merge": config.model_dump_json()}
    weights = linear_weights(config, len(finetuned))
    positional_io = hasattr(os, "preadv") and hasattr(os, "pwrite")  # not on Windows
    files = _single_safetensors(base, finetuned) if weights is not None and positional_io else None
    if weights is not None and files is not None:
        # a linear merge of safetensors files: the bandwidth path, whose file headers serve the
        # checks too (each header is read once)
        with ExitStack() as stack:
            raws = [stack.enter_context(RawSafetensors(f)) for f in files]
            keys = set(selected_keys(raws[0], raws[1:], param_filter, "fine-tuned model"))
            threads = min(4, os.cpu_count() or 1)
            fused_linear_merge(raws, Path(out), raws[0].keys(), keys, weights, metadata, threads)
        return
    b = TensorSource(base, allow_pickle)
    fts = [TensorSource(f, allow_pickle) for f in finetuned]
    try:
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
    finally:
        b.close()
        for f in fts:
            f.close()


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
