"""The clean merge of any model pool: task arithmetic (eq. 6), or any method of the registry with
its options, with lambda chosen on validation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rmtllmf.fusion import (
    MergeConfig,
    TaskVector,
    cosine_matrix,
    lambda_values,
    merge_task_vectors,
    select_lambda,
)
from rmtllmf.metrics import gap_recovery, normalized_accuracy
from rmtllmf.pools.base import MapCalls, ModelPool


@dataclass(frozen=True)
class MergeReport:
    """A clean merge of ``tasks``: lambda from validation, accuracies on test."""

    tasks: tuple[str, ...]
    scaling: float
    val_normalized: dict[float, float]
    test_accuracy: dict[str, float]
    normalized: float
    gap_recovery: float
    cosine: np.ndarray
    merge: MergeConfig
    """the merge reported: method, the chosen lambda and the method's resolved options"""


def task_vectors(pool: ModelPool, tasks: Sequence[str]) -> list[TaskVector]:
    """Eq. 1: clean task vectors of the pool's fine-tuned models."""
    base = pool.base_state
    return [TaskVector.from_models(base, pool.finetuned[t]) for t in tasks]


@dataclass(frozen=True)
class LambdaJob:
    """One point of eq. 6's grid search: the clean merge of ``tasks`` at ``scaling``."""

    tasks: tuple[str, ...]
    method: str
    scaling: float
    options: tuple[tuple[str, Any], ...] = ()
    """the method's own options (e.g. TIES's ``density``), as ``(name, value)`` pairs"""

    def merge_config(self) -> MergeConfig:
        """The merge this point scores."""
        return MergeConfig(method=self.method, scaling=self.scaling, options=dict(self.options))


def lambda_score(pool: ModelPool, job: LambdaJob) -> float:
    """The clean merge's normalized accuracy (eq. 13) on *validation* data at ``job.scaling``."""
    base = pool.base_state
    tvs = [TaskVector.from_models(base, pool.finetuned[t]) for t in job.tasks]
    ft_val = {t: pool.finetuned_accuracy(t, "val") for t in job.tasks}
    merged = merge_task_vectors(base, tvs, job.merge_config())
    return normalized_accuracy(pool.task_accuracy(merged, job.tasks, "val"), ft_val)


def choose_lambda(
    pool: ModelPool,
    tasks: Sequence[str],
    method: str = "task-arithmetic",
    grid: Sequence[float] | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    map_calls: MapCalls | None = None,
) -> tuple[float, dict[float, float]]:
    """Eq. 6's ``λ_N``: the ``λ`` maximising the clean merge's normalized accuracy on
    *validation* data (tangent task arithmetic's protocol; ``grid`` defaults to
    ``linspace(0, 1, 21)``), and every score. ``options`` are the method's own (e.g. TIES's
    ``density``). ``map_calls`` scores the grid's points (e.g. on an executor's workers); by
    default they are scored here, one after another."""
    values = lambda_values(grid)
    resolved = MergeConfig(method=method, options=dict(options or {}))  # bad options fail here
    opts = tuple(sorted(resolved.options.items()))
    jobs = [LambdaJob(tuple(tasks), method, lam, opts) for lam in values]
    if map_calls is None:
        scores = [lambda_score(pool, job) for job in jobs]
    else:
        scores = map_calls(lambda_score, jobs)
    table = dict(zip(values, scores, strict=True))
    return select_lambda(table.__getitem__, values).best, table


def evaluate_clean_merge(
    pool: ModelPool,
    tasks: Sequence[str],
    method: str = "task-arithmetic",
    grid: Sequence[float] | None = None,
    *,
    options: Mapping[str, Any] | None = None,
) -> MergeReport:
    """Merge the clean task vectors of ``tasks`` by ``method`` (with its ``options``); pick
    lambda on validation, report test."""
    tvs = task_vectors(pool, tasks)
    base = pool.base_state
    best, scores = choose_lambda(pool, tasks, method, grid, options=options)
    config = MergeConfig(method=method, scaling=best, options=dict(options or {}))
    merged = merge_task_vectors(base, tvs, config)
    test = pool.task_accuracy(merged, tasks, "test")
    ft_test = {t: pool.finetuned_accuracy(t, "test") for t in tasks}
    base_test = {t: pool.base_accuracy(t, "test") for t in tasks}
    return MergeReport(
        tasks=tuple(tasks),
        scaling=best,
        val_normalized=scores,
        test_accuracy=test,
        normalized=normalized_accuracy(test, ft_test),
        gap_recovery=gap_recovery(test, base_test, ft_test),
        cosine=cosine_matrix(tvs),
        merge=config,
    )
