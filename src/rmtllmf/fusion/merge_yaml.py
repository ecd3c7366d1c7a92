"""mergekit-style merge configs: ``rmtllmf merge --config merge.yaml``.

A mergekit user's file works with few or no edits. The fields keep mergekit's names where the
meaning is the same:

.. code-block:: yaml

    merge_method: task_arithmetic      # task_arithmetic | ties | dare_linear | dare_ties | linear
    base_model: models/base            # a local path (relative to the working directory)
    models:
      - model: models/ft-sentiment     # a checkpoint, HF directory or LoRA adapter directory
        parameters: {weight: 1.0}
      - model: models/ft-topic
        parameters: {weight: 0.5}
    parameters: {lambda: 0.4, normalize: false}
    dtype: float32                      # output dtype (out_dtype wins if both are given)

Each method maps onto the registry (:mod:`rmtllmf.fusion.methods`), with mergekit's defaults:

============== ========================================================================
mergekit        rmtllmf
============== ========================================================================
task_arithmetic ``task-arithmetic``, ``lambda`` (default 1), weights ``w_q`` (divided by
                their sum with ``normalize: true``; default false)
ties            ``ties``, ``density`` (default 1), disjoint ``mean`` weighted by ``w_q``
                (``normalize: true``, the default) or ``sum`` (false), ``lambda``
dare_linear     ``dare`` with ``combine: task-arithmetic``, ``drop_rate = 1 - density``
dare_ties       ``dare`` with ``combine: ties`` (no magnitude trim: density 1), ``drop_rate =
                1 - density``, ``mean`` / ``sum`` as ties (``normalize`` default false)
linear          ``task-arithmetic`` with ``lambda = 1`` and weights ``w_q / sum w``:
                ``sum_q w_q theta_q / sum w`` (the first model is the base if none is given)
============== ========================================================================

Differences that remain (documented in ``docs/merging.md``): TIES trims with one threshold over
each whole task vector (the paper's, FusionBench's) where mergekit trims each tensor; an exact
tie of the elected sign takes the tensor's majority sign where mergekit takes +; DARE rescales
by ``1/(1-p)`` where mergekit's ``rescale`` matches each tensor's L1 norm; every merge is
computed in float32 (``dtype`` sets the output's dtype). Parameters are numbers: mergekit's
per-layer gradients (lists) and filters, ``slices``, ``modules``, tokenizer merging, and other
methods are refused with the list of what is supported. One ``density`` serves all models.

rmtllmf's own settings go under an ``rmtllmf:`` section: ``include`` / ``exclude`` (parameter
globs) and ``seed`` (DARE's drop masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rmtllmf.errors import InputError, validation_message
from rmtllmf.fusion.method_registry import MergeConfig
from rmtllmf.fusion.params import ParamFilter
from rmtllmf.fusion.safetensors_format import BY_NAME, Dtype

MERGEKIT_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "linear")
"""mergekit's ``merge_method`` values that rmtllmf merges."""

DTYPES = {name: BY_NAME[name] for name in ("float32", "float16", "bfloat16")}


def _number(value: Any) -> Any:
    """One number per parameter: mergekit's gradients (lists) and filters are refused here."""
    if isinstance(value, list | dict):
        raise ValueError(
            "give one number; mergekit's per-layer gradients (lists) and filters are not "
            "supported by rmtllmf"
        )
    return value


class ModelParameters(BaseModel):
    """Per-model ``parameters`` of a ``models`` entry (mergekit's names)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float | None = None
    density: float | None = Field(None, gt=0.0, le=1.0)

    @field_validator("weight", "density", mode="before")
    @classmethod
    def _one_number(cls, value: Any) -> Any:
        return _number(value)


class GlobalParameters(ModelParameters):
    """The top-level ``parameters``: defaults for every model's, and the method's own."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    lambda_: float | None = Field(None, alias="lambda", ge=0.0)
    normalize: bool | None = None
    rescale: bool | None = None
    int8_mask: bool | None = None
    """mergekit's memory option; accepted and without effect (masks here are booleans)."""

    @field_validator("lambda_", mode="before")
    @classmethod
    def _one_lambda(cls, value: Any) -> Any:
        return _number(value)


class ModelEntry(BaseModel):
    """One entry of ``models``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    parameters: ModelParameters = ModelParameters()


class RmtllmfSection(BaseModel):
    """rmtllmf's own settings (not in mergekit)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    seed: int = 0


class MergeYaml(BaseModel):
    """A mergekit-style merge config, validated (frozen; unknown keys are errors)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    merge_method: str
    models: list[ModelEntry] = Field(min_length=1)
    base_model: str | None = None
    parameters: GlobalParameters = GlobalParameters()
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    rmtllmf: RmtllmfSection = RmtllmfSection()

    @field_validator("merge_method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in MERGEKIT_METHODS:
            raise ValueError(
                f"{value!r} is not supported; rmtllmf merges with {', '.join(MERGEKIT_METHODS)}"
            )
        return value

    @field_validator("dtype", "out_dtype")
    @classmethod
    def _known_dtype(cls, value: str | None) -> str | None:
        if value is not None and value.removeprefix("torch.") not in DTYPES:
            raise ValueError(f"{value!r} is not one of {', '.join(DTYPES)}")
        return value

    @field_validator("tokenizer_source")
    @classmethod
    def _base_tokenizer(cls, value: str | None) -> str | None:
        if value not in (None, "base"):
            raise ValueError(
                f"{value!r} is not supported: the output carries the base's tokenizer "
                "(tokenizer_source: base)"
            )
        return value

    def _fine_tuned(self) -> tuple[list[ModelEntry], list[float]]:
        """The models other than the base and their weights (each model's own, else the
        config's), checked: a base where the method needs one, at least one model, every
        weight given."""
        method, p = self.merge_method, self.parameters
        entries = [m for m in self.models if m.model != self.base_model]
        if self.base_model is None:
            if method != "linear":
                raise InputError(f"base_model is required for merge_method {method}")
            if len(entries) < 2:
                raise InputError("a linear merge without base_model needs at least two models")
        if not entries:
            raise InputError("models lists no model besides base_model; give fine-tuned models")
        weights = []
        for i, entry in enumerate(self.models):
            if entry not in entries:
                continue
            w = entry.parameters.weight if entry.parameters.weight is not None else p.weight
            if w is None:
                raise InputError(
                    f"models[{i}].parameters.weight is required (as in mergekit); give each "
                    "model a weight, or parameters.weight for all"
                )
            weights.append(float(w))
        return entries, weights

    def _density(self, entries: list[ModelEntry]) -> float | None:
        """The one density of the models (each model's own, else the config's), where the
        method has one; DARE's rescaling cannot be switched off."""
        p, method = self.parameters, self.merge_method
        densities = {
            m.parameters.density if m.parameters.density is not None else p.density for m in entries
        }
        if len(densities) > 1:
            raise InputError(
                f"models have different densities ({sorted(d for d in densities if d)}); "
                "rmtllmf keeps one density for all models: give parameters.density once"
            )
        density = densities.pop()
        if density is not None and method in ("task_arithmetic", "linear"):
            raise InputError(
                f"density has no meaning for merge_method {method}; use ties or dare_linear, "
                "or remove it"
            )
        if p.rescale is False:
            raise InputError(
                "parameters.rescale: false is not supported; DARE always rescales the kept "
                "entries by 1/(1 - drop rate)"
            )
        return density

    def _linear(self, weights: list[float]) -> MergeConfig:
        """mergekit's ``linear``: ``sum_q w_q theta_q / sum_q w_q`` (as a merge of task vectors,
        scaling 1 and the normalised weights)."""
        p = self.parameters
        if p.lambda_ is not None:
            raise InputError("lambda has no meaning for merge_method linear; remove it")
        total = sum(weights)
        if p.normalize is False and abs(total - 1.0) > 1e-6:
            raise InputError(
                f"a linear merge with normalize: false and weights summing to {total:g} "
                "scales the whole model; set normalize: true or weights that sum to 1"
            )
        if abs(total) < 1e-8:
            raise InputError("the linear merge's weights sum to 0; give weights with a sum")
        return MergeConfig(scaling=1.0, weights=tuple(w / total for w in weights))

    def _task_vector_merge(self, weights: list[float], density: float | None) -> MergeConfig:
        """``task_arithmetic``, ``ties``, ``dare_linear`` and ``dare_ties`` as a registry merge."""
        method, normalize = self.merge_method, self.parameters.normalize
        lam = 1.0 if self.parameters.lambda_ is None else self.parameters.lambda_
        if method == "task_arithmetic":
            return MergeConfig(scaling=lam, weights=_normalized(weights, normalize is True))
        if method == "ties":
            options: dict[str, Any] = {
                "density": density or 1.0,
                "merge": "sum" if normalize is False else "mean",
            }
            return MergeConfig(method="ties", scaling=lam, options=options, weights=weights)
        options = {"drop_rate": 1.0 - (density or 1.0), "seed": self.rmtllmf.seed}
        if method == "dare_linear":
            return MergeConfig(
                method="dare",
                scaling=lam,
                options=options,
                weights=_normalized(weights, normalize is True),
            )
        options |= {
            "combine": "ties",
            "density": 1.0,
            "merge": "mean" if normalize is True else "sum",
        }
        return MergeConfig(method="dare", scaling=lam, options=options, weights=weights)

    def plan(self) -> MergePlan:
        """The merge this config asks for (paths as written; see :func:`load_merge_config`)."""
        entries, weights = self._fine_tuned()
        density = self._density(entries)
        base, paths = self.base_model, [m.model for m in entries]
        if self.merge_method == "linear":
            config = self._linear(weights)
            if base is None:  # the first model stands in for the base (weights sum to 1)
                base, paths = paths[0], paths[1:]
                config = config.model_copy(update={"weights": (config.weights or ())[1:]})
        else:
            config = self._task_vector_merge(weights, density)
        if config.weights is not None and all(w == 1.0 for w in config.weights):
            config = config.model_copy(update={"weights": None})
        out = self.out_dtype or self.dtype
        assert base is not None  # _fine_tuned: only a linear merge may lack one
        return MergePlan(
            base=base,
            models=tuple(paths),
            config=config,
            params=ParamFilter(include=self.rmtllmf.include, exclude=self.rmtllmf.exclude),
            dtype=DTYPES[out.removeprefix("torch.")] if out else None,
        )


def _normalized(weights: list[float], normalize: bool) -> tuple[float, ...]:
    """The weights, divided by their sum with ``normalize`` (mergekit: a sum near 0 is 1)."""
    total = sum(weights) if normalize else 1.0
    return tuple(w / (total if abs(total) >= 1e-8 else 1.0) for w in weights)


@dataclass(frozen=True)
class MergePlan:
    """A merge config resolved: what :func:`~rmtllmf.fusion.drivers.merge_checkpoints` takes."""

    base: str
    models: tuple[str, ...]
    config: MergeConfig
    params: ParamFilter
    dtype: Dtype | None


def load_merge_config(path: str | Path) -> MergePlan:
    """Read, validate and resolve a mergekit-style YAML merge config (see the module docs).

    Model paths are read as mergekit reads them, relative to the working directory; each must
    exist here (rmtllmf never downloads). Every problem is an
    :class:`~rmtllmf.errors.InputError` that names the file and the YAML key.
    """
    p = Path(path)
    where = f"merge config {p}"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{where} does not exist; check the path (--config)") from None
    except OSError as exc:
        raise InputError(f"cannot read {where}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise InputError(f"{where} is not valid YAML{at}: {problem}; fix the file") from None
    if data is None:
        raise InputError(
            f"{where} is empty; it needs merge_method, base_model and models (see "
            "configs/merge/task-arithmetic.yaml)"
        )
    if not isinstance(data, dict):
        raise InputError(
            f"{where} must be a mapping of keys (merge_method, base_model, models, ...), not "
            f"a {type(data).__name__}"
        )
    unsupported = {
        "slices": "layer slices",
        "modules": "per-module merges",
        "tokenizer": "tokenizer merging",
        "chat_template": "chat templates",
    }
    for key, what in unsupported.items():
        if key in data:
            raise InputError(
                f"{where}: {key}: mergekit's {what} are not supported; rmtllmf merges whole "
                "models listed under models"
            )
    try:
        config = MergeYaml.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{where}: {validation_message(exc)}") from None
    try:
        plan = config.plan()
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    keys = [("base_model", config.base_model)] if config.base_model is not None else []
    keys += [(f"models[{i}].model", m.model) for i, m in enumerate(config.models)]
    for key, model in keys:
        if not Path(model).exists():
            raise InputError(
                f"{where}: {key}: {model!r} does not exist here; rmtllmf reads local paths only "
                "(relative to the working directory): download the model first "
                "(huggingface-cli download NAME --local-dir DIR) and give DIR"
            )
    return plan
