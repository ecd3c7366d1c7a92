"""Weight disentanglement error (paper eqs. 7-8, after Ortiz-Jimenez et al., tangent task
arithmetic).

.. math::

    \\xi(\\lambda) = \\sum_{i=1}^{N} \\mathbb{E}_{x \\sim P(D_{\\tau_i})}
        \\mathbb{1}\\Big[f(x; \\theta_{base} + \\lambda_i \\tau_i)
        \\ne f\\big(x; \\theta_{base} + \\lambda_N \\textstyle\\sum_j \\hat\\tau_j\\big)\\Big]

(eq. 8 writes Γ as the indicator of *disagreement*: 0 when the multi-task model predicts what
task i's own model predicts). The reference for task i is always its *clean* vector scaled by
``lambda_i``; the merged model uses the vectors the BS actually holds (``merged_vectors``, the
received ``τ̂_j``; the clean ones when omitted), so the same function measures the clean
interference and what the channel adds to it. ``ξ`` grows with ``N`` (a sum over tasks); the
result also carries the per-task mean, comparable across task counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from rmtllmf.errors import InputError
from rmtllmf.fusion import MergeConfig, TaskVector, merge_task_vectors

#: ``predict(state, task) -> predicted labels on task's evaluation inputs``
Predict = Callable[[Mapping[str, torch.Tensor], str], NDArray[np.int64]]


@dataclass(frozen=True)
class WdeResult:
    """Eq. 7: ``ξ``, its per-task terms ``E_x Γ`` (eq. 8) and their mean."""

    per_task: dict[str, float]
    total: float

    @property
    def mean(self) -> float:
        """``ξ / N``: the average disagreement rate over tasks."""
        return self.total / max(len(self.per_task), 1)


def weight_disentanglement_error(
    predict: Predict,
    base: Mapping[str, torch.Tensor],
    tasks: Sequence[str],
    vectors: Sequence[TaskVector],
    *,
    lambda_merged: float,
    lambda_individual: float | Sequence[float] = 1.0,
    merged_vectors: Sequence[TaskVector] | None = None,
) -> WdeResult:
    """Eqs. 7-8: ``ξ(λ)`` for the clean ``vectors`` of ``tasks``, with ``Γ`` the indicator of
    disagreement between task i's own model and the merged model.

    ``lambda_individual`` is ``λ_i`` (one value or one per task; 1.0 makes the reference the
    fine-tuned model itself), ``lambda_merged`` is ``λ_N`` of eq. 6.
    """
    if len(tasks) != len(vectors) or not tasks:
        raise InputError(
            f"give one task vector per task: {len(tasks)} tasks, {len(vectors)} vectors"
        )
    merged_in = list(merged_vectors) if merged_vectors is not None else list(vectors)
    if not merged_in:
        raise InputError("merged_vectors is empty: nothing reached the BS")
    lambdas = (
        [float(lambda_individual)] * len(tasks)
        if isinstance(lambda_individual, (int, float))
        else [float(v) for v in lambda_individual]
    )
    if len(lambdas) != len(tasks):
        raise InputError(f"lambda_individual has {len(lambdas)} values for {len(tasks)} tasks")
    merged = merge_task_vectors(base, merged_in, MergeConfig(scaling=lambda_merged))
    per_task = {}
    for task, vec, lam in zip(tasks, vectors, lambdas, strict=True):
        alone = vec.apply(base, scale=lam)
        ref, multi = predict(alone, task), predict(merged, task)
        per_task[task] = float(np.mean(ref != multi)) if len(ref) else 0.0
    return WdeResult(per_task=per_task, total=float(sum(per_task.values())))
