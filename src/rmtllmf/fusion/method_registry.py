"""The merge-method registry: one signature, everything about a method in its entry.

A method is a per-tensor function ``(taus, ctx) -> delta`` registered with :func:`register`,
together with its options model (validated when a :class:`MergeConfig` names it), whether it
needs global TIES thresholds, whether it can be merged slice by slice (and the prepass that
needs), and, for a method linear in the models, its weights (:func:`linear_weights`), which
let the drivers take the fused bandwidth path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Self, TypeAlias, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from rmtllmf._lazy import lazy_module
from rmtllmf.errors import InputError, validation_message
from rmtllmf.fusion.selection import ties_thresholds

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")


class NoOptions(BaseModel):
    """A method without options of its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")


_Options = TypeVar("_Options", bound=BaseModel)


class MergeConfig(BaseModel):
    """How to merge (frozen). ``scaling`` is the paper's ``lambda_N``; ``options`` are the
    method's own parameters, validated by its registry entry (its ``options`` model) and stored
    resolved, defaults filled in.

    ``weights`` (optional, one per model, mergekit's per-model ``weight``) scale each task vector
    before the method sees it: ``tau_q -> w_q tau_q``. Task arithmetic then gives
    ``theta_base + lambda sum_q w_q tau_q``; TIES's disjoint mean divides by the summed weights of
    the agreeing models instead of their count (mergekit's normalised TIES). ``weights`` is left
    out of the dump when unset, so a config without weights keeps its stored run id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = "task-arithmetic"
    scaling: float = Field(
        0.3,
        ge=0.0,
        allow_inf_nan=False,
        description="lambda for task-arithmetic / ties / dare (a method that takes none, such "
        "as average, ignores it: see MergeMethod.scaled)",
    )
    options: dict[str, Any] = Field(default_factory=dict)
    weights: tuple[Annotated[float, Field(allow_inf_nan=False)], ...] | None = Field(
        None, description="per-model weights w_q (task vectors scaled before merging)"
    )

    @model_serializer(mode="wrap")
    def _omit_unset_weights(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("weights", 0) is None:
            data.pop("weights")
        return data

    def check_models(self, n_models: int) -> None:
        """Raise :class:`~rmtllmf.errors.InputError` unless ``weights`` (if given) has one
        entry per model."""
        if self.weights is not None and len(self.weights) != n_models:
            raise InputError(
                f"{len(self.weights)} merge weights for {n_models} models; give one weight per "
                "model (--weights / each model's parameters.weight)"
            )

    @model_validator(mode="after")
    def _resolve_options(self) -> Self:
        entry = get_method(self.method)
        try:
            resolved = entry.options.model_validate(self.options).model_dump()
        except ValidationError as exc:
            takes = ", ".join(entry.options.model_fields) or "no options"
            raise ValueError(
                f"merge method {self.method!r} takes {takes}: {validation_message(exc)}"
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


MergeFn: TypeAlias = "Callable[[Sequence[torch.Tensor], TensorContext], torch.Tensor]"
VectorsFn: TypeAlias = "Callable[[Sequence[torch.Tensor], TensorContext], torch.Tensor]"
"""The per-model vectors a method trims and elects over, stacked ``(N, ...)``, from the task
vectors' slices ``[tau_1, ..., tau_N]`` at ``ctx.offset`` of parameter ``ctx.name``."""
Prepass: TypeAlias = (
    "Callable[[Iterable[tuple[int, Sequence[torch.Tensor]]], TensorContext], TensorContext]"
)
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
    scaled: bool = True
    """Whether the method multiplies its merge by ``lambda`` (``MergeConfig.scaling``); a
    method that does not (average) refuses a ``lambda`` the user gives."""


MERGE_METHODS: dict[str, MergeMethod] = {}


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
    scaled: bool = True,
) -> Callable[[MergeFn], MergeFn]:
    """Add a merge method to the registry under ``name`` (see :class:`MergeMethod`)."""

    def wrap(fn: MergeFn) -> MergeFn:
        MERGE_METHODS[name] = MergeMethod(
            fn, needs_thresholds, summary, sliceable, prepass, vectors, options, linear, scaled
        )
        return fn

    return wrap


def get_method(name: str) -> MergeMethod:
    """Look up a merge method; unknown names list the known ones."""
    if name not in MERGE_METHODS:
        raise InputError(f"unknown merge method {name!r}; choose one of {sorted(MERGE_METHODS)}")
    return MERGE_METHODS[name]


def linear_weights(config: MergeConfig, n_models: int) -> list[float] | None:
    """Per-model weights ``w_q`` when the method is linear in the models, i.e.
    ``merged = (1 - sum_q w_q) theta_base + sum_q w_q theta_q`` (task arithmetic: ``w = lambda``;
    average: ``w = 1/N``), as its registry entry declares, times the config's per-model
    ``weights`` where given; ``None`` for non-linear methods."""
    linear = get_method(config.method).linear
    if linear is None:
        return None
    config.check_models(n_models)
    weights = linear(config, n_models)
    if config.weights is not None:
        weights = [w * s for w, s in zip(weights, config.weights, strict=True)]
    return weights


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
