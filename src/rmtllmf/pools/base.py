"""What the study needs from a model family and its task suite (FusionBench's *model pool* and
*task pool* in one small interface).

:class:`ModelPool` is the contract: the study (:mod:`rmtllmf.study`) reads a family only
through it, and the family registry (:mod:`rmtllmf.app.family_registry`) builds one per study.
:class:`PoolRecord` is what a pool measures once and caches; :func:`measure_task` fills it.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict
from torch import nn

from rmtllmf._io import write_text_atomic
from rmtllmf.errors import InputError
from rmtllmf.training.loops import Preprocess

Split = tuple[NDArray[np.uint8], NDArray[np.int64]]
ModelT = TypeVar("ModelT", bound=nn.Module)
MEASURED_SPLITS = ("val", "test")
"""The splits a pool's record holds accuracies of."""


class PoolRecord(BaseModel):
    """What a pool measures once and caches as JSON: every task's base and fine-tuned accuracy
    per split (``accuracy[task][split]``), with the pool's resolved config."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any]
    base: dict[str, dict[str, float]] = {}
    finetuned: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    """fine-tuning time per task, where the pool trained its experts"""
    base_file: str | None = None
    """the base checkpoint, where the pool read one from disk"""

    def accuracy(self, model: Literal["base", "finetuned"], task: str, split: str) -> float:
        """A measured accuracy; a clear error for a task or split that was not measured."""
        table = self.base if model == "base" else self.finetuned
        if task not in table or split not in table[task]:
            raise InputError(
                f"no {model} accuracy of task {task!r} on split {split!r} in the pool's record "
                f"(tasks {sorted(table)}); splits measured: val, test"
            )
        return table[task][split]

    @classmethod
    def load(cls, path: Path) -> PoolRecord:
        """Read a record written by :meth:`save`."""
        return cls.model_validate_json(path.read_text())

    def save(self, path: Path) -> None:
        """Write the record as JSON (atomically)."""
        write_text_atomic(path, self.model_dump_json(indent=2))


class MeasuredPool(Protocol):
    """What :func:`measure_task` reads of a pool while it is built."""

    record: PoolRecord

    @property
    def base(self) -> Any: ...

    @property
    def finetuned(self) -> Mapping[str, Mapping[str, torch.Tensor]]: ...

    def model_from_state(self, state: Mapping[str, torch.Tensor]) -> Any: ...

    def accuracy(self, model: Any, task: str, split: str) -> float: ...


def measure_task(pool: MeasuredPool, task: str) -> None:
    """Record the base model's and ``task``'s fine-tuned model's accuracy on ``task`` for each
    of :data:`MEASURED_SPLITS`, where the pool's record lacks them (once: the record is cached
    with the pool)."""
    record = pool.record
    if task not in record.base:
        record.base[task] = {s: pool.accuracy(pool.base, task, s) for s in MEASURED_SPLITS}
    if task not in record.finetuned:
        model = pool.model_from_state(pool.finetuned[task])
        record.finetuned[task] = {s: pool.accuracy(model, task, s) for s in MEASURED_SPLITS}


class RecordedAccuracies:
    """The pool methods that read the measured accuracies from the pool's ``record``."""

    record: PoolRecord

    def finetuned_accuracy(self, task: str, split: str = "test") -> float:
        """The task's own fine-tuned accuracy (the normaliser of normalized accuracy)."""
        return self.record.accuracy("finetuned", task, split)

    def base_accuracy(self, task: str, split: str = "test") -> float:
        """The base model's accuracy on the task, with the task's head."""
        return self.record.accuracy("base", task, split)


class LoadedPool(RecordedAccuracies, ABC, Generic[ModelT]):
    """The :class:`ModelPool` methods of a pool that holds its base model (``base``) and scores a
    model on a task's split (:meth:`accuracy`): the base's state, a model of the base's
    architecture with a state loaded, and the accuracy of a state per task."""

    base: ModelT

    @abstractmethod
    def accuracy(self, model: ModelT, task: str, split: str) -> float:
        """Accuracy of ``model`` on ``task``'s split, with that task's head."""

    @property
    def base_state(self) -> dict[str, torch.Tensor]:
        """A copy of the base model's parameters (its own keys)."""
        return {k: v.detach().clone() for k, v in self.base.state_dict().items()}

    def model_from_state(self, state: Mapping[str, torch.Tensor]) -> ModelT:
        """A model of the base's architecture with ``state`` loaded (strict), in eval mode."""
        model = copy.deepcopy(self.base)
        model.load_state_dict(dict(state))
        return model.eval()

    def task_accuracy(
        self, state: Mapping[str, torch.Tensor], tasks: Sequence[str], split: str = "test"
    ) -> dict[str, float]:
        """Accuracy of the model ``state`` on each task's split, with that task's head."""
        model = self.model_from_state(state)
        return {t: self.accuracy(model, t, split) for t in tasks}


class ModelPool(Protocol):
    """A base model, one fine-tuned model per task, fixed task heads and task data.

    State dicts share one key set (``base_state``'s); ``model_from_state`` returns a module
    whose ``state_dict()`` has exactly those keys and maps preprocessed images to embeddings
    that ``heads[task]`` turns into logits.
    """

    @property
    def finetuned(self) -> Mapping[str, Mapping[str, torch.Tensor]]: ...

    @property
    def heads(self) -> Mapping[str, nn.Module]: ...

    @property
    def data(self) -> Mapping[str, Mapping[str, Split]]: ...

    @property
    def pool_id(self) -> str: ...

    @property
    def record(self) -> PoolRecord: ...

    @property
    def base_state(self) -> dict[str, torch.Tensor]: ...

    @property
    def embedding_names(self) -> tuple[str, ...]: ...

    def preprocess(self, images: torch.Tensor) -> torch.Tensor: ...

    def n_classes(self, task: str) -> int: ...

    def model_from_state(self, state: Mapping[str, torch.Tensor]) -> nn.Module: ...

    def task_accuracy(
        self, state: Mapping[str, torch.Tensor], tasks: Sequence[str], split: str = "test"
    ) -> dict[str, float]: ...

    def finetuned_accuracy(self, task: str, split: str = "test") -> float: ...

    def base_accuracy(self, task: str, split: str = "test") -> float: ...


MapCalls = Callable[[Callable[[ModelPool, Any], Any], Sequence[Any]], list[Any]]
"""Runs ``fn(pool, item)`` for every item on one pool and returns the results in order (an
executor's ``map_calls``, :mod:`rmtllmf.study.executors`)."""


__all__ = [
    "MEASURED_SPLITS",
    "LoadedPool",
    "ModelPool",
    "PoolRecord",
    "Preprocess",
    "RecordedAccuracies",
    "Split",
    "measure_task",
]
