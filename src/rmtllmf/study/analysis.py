"""Interference analysis of one run: what the channel does to the merge before any defense.

For the run's task subset, on the first ``samples`` test images of every task:

* WDE ``ξ`` (eqs. 7-8) of the clean merge and of the merge of the *received* vectors, both
  against each task's own fine-tuned model (``λ_i = 1``) — the difference is the interference
  the channel adds;
* the hypothesis test of eqs. 9-12 between the undisturbed merge (clean vectors) and the
  disturbed one (received vectors), robust and paper statistics, with ``||J||_F²`` from
  Jacobian-vector products over the parameters the channel perturbs; ``Σ μ_q`` is the
  *measured* per-entry error of the received vectors (eq. 9's ``E|ε̃_q|²``; equal to the
  channel's ``μ_q`` for the absolute link), the threshold uses ``N · mu_ref``.

Most of this is the same for every reception of one subset: the references ``θ_base + τ_i``,
the clean merge, its logits and its ``||J||_F²``. Logits are memoised by the content of the
state they come from (:func:`state_digest`) and ``||J||_F²`` by the clean merge's, per pool
object, so a sweep computes them once per process and only the received merge's forward
passes per run; the numbers are bit-identical to computing everything anew.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from rmtllmf.fusion import MergeConfig, TaskVector, merge_task_vectors
from rmtllmf.metrics import WdeResult, jacobian_sq_norm, logit_hypothesis_test
from rmtllmf.metrics import weight_disentanglement_error as wde
from rmtllmf.pools.base import ModelPool


class AnalysisConfig(BaseModel):
    """Settings of the interference analysis (frozen)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    samples: int = Field(200, ge=1, description="test images per task")
    probes: int = Field(4, ge=1, description="JVP probes for ||J||_F^2")
    mu_ref: float = Field(0.013, gt=0, description="tolerated per-user MSE that sets T")
    beta: float = Field(0.05, gt=0, lt=1, description="significance level")


@dataclass(frozen=True)
class Analysis:
    """WDE and hypothesis-test outcome of one run."""

    wde_clean: WdeResult
    wde_received: WdeResult
    rejection_robust: dict[str, float]
    rejection_paper: dict[str, float]
    sum_mu: float
    sum_mu_ref: float

    def summary(self) -> dict[str, float]:
        """Flat numbers for tables: WDE per task (mean) and mean rejection rates."""
        return {
            "wde_clean": self.wde_clean.mean,
            "wde_received": self.wde_received.mean,
            "reject_robust": float(np.mean(list(self.rejection_robust.values()))),
            "reject_paper": float(np.mean(list(self.rejection_paper.values()))),
            "sum_mu": self.sum_mu,
            "sum_mu_ref": self.sum_mu_ref,
        }


K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    """A memo of at most ``size`` entries, the least recently used dropped first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, make: Callable[[], V]) -> V:
        """The value of ``key``, made by ``make()`` when absent."""
        if key not in self.items:
            self.items[key] = make()
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return self.items[key]

    def clear(self) -> None:
        """Forget every entry."""
        self.items.clear()

    def __len__(self) -> int:
        return len(self.items)


_LOGITS: _Lru[tuple[Any, ...], torch.Tensor] = _Lru(64)
"""Logits by (pool, samples, task, state digest): a subset's references and clean merge."""
_JACOBIANS: _Lru[tuple[Any, ...], dict[str, torch.Tensor]] = _Lru(64)
"""``||J||_F^2`` per task by (pool, samples, tasks, probes, seed, clean merge's digest)."""


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A digest of a state dict's content (names, dtypes, shapes, bytes): equal digests mean
    equal states, so a result computed from one stands for the other."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


class _Logits:
    """One analysis's view of ``pool``: its test inputs (first ``samples`` per task) and the
    logits of a state on them, memoised by the state's content across analyses."""

    def __init__(self, pool: ModelPool, samples: int) -> None:
        self.pool, self.samples = pool, samples
        self.where = (id(pool), pool.pool_id, samples)
        self.inputs: dict[str, torch.Tensor] = {}
        self.recent: _Lru[int, tuple[Mapping[str, torch.Tensor], str]] = _Lru(3)

    def digest(self, state: Mapping[str, torch.Tensor]) -> str:
        """:func:`state_digest` of the last few states, by object (holding a state keeps its id
        unique, and only a few are held: a state may be a whole model's weights)."""
        return self.recent.get(id(state), lambda: (state, state_digest(state)))[1]

    def batch(self, task: str) -> torch.Tensor:
        """The task's preprocessed test inputs."""
        if task not in self.inputs:
            images = self.pool.data[task]["test"][0][: self.samples]
            self.inputs[task] = self.pool.preprocess(torch.from_numpy(images))
        return self.inputs[task]

    def __call__(self, state: Mapping[str, torch.Tensor], task: str) -> torch.Tensor:
        """The task head's logits of ``state`` on the task's inputs."""

        def run() -> torch.Tensor:
            with torch.inference_mode():
                model = self.pool.model_from_state(state)
                out: torch.Tensor = self.pool.heads[task](model(self.batch(task)))
            return out

        return _LOGITS.get((*self.where, task, self.digest(state)), run)

    def predict(self, state: Mapping[str, torch.Tensor], task: str) -> NDArray[np.int64]:
        """The predicted classes (eq. 7's ``f(x; θ)``)."""
        return self(state, task).argmax(-1).numpy()


def _jacobians(
    logits: _Logits,
    tasks: Sequence[str],
    names: Sequence[str],
    merged: Mapping[str, torch.Tensor],
    cfg: AnalysisConfig,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Eq. 10's ``||J||_F^2`` of each task's logits at the ``merged`` state with respect to the
    parameters ``names`` (those the channel perturbs)."""
    model = logits.pool.model_from_state(merged)
    params = {k: v for k, v in model.named_parameters() if k in names}
    gen = torch.Generator().manual_seed(seed)
    return {
        task: _jacobian_sq_norm(
            model, logits.pool.heads[task], params, logits.batch(task), cfg.probes, gen
        )
        for task in tasks
    }


def interference_analysis(
    pool: ModelPool,
    tasks: Sequence[str],
    clean: Sequence[TaskVector],
    received: Sequence[TaskVector],
    error_mse: NDArray[np.float64],
    *,
    scaling: float,
    cfg: AnalysisConfig,
    seed: int,
) -> Analysis:
    """Eqs. 7-11 on one run: WDE and hypothesis test of merging ``clean`` vs ``received``, whose
    difference is eq. 9's ``Δθ`` (task ``tasks[q]``'s vectors at index ``q``, ``λ = scaling``);
    see module docs."""
    tasks = list(tasks)
    base = pool.base_state
    logits = _Logits(pool, cfg.samples)
    wde_clean = wde(logits.predict, base, tasks, clean, lambda_merged=scaling)
    wde_received = wde(
        logits.predict, base, tasks, clean, lambda_merged=scaling, merged_vectors=received
    )
    undisturbed = merge_task_vectors(base, clean, MergeConfig(scaling=scaling))
    disturbed = (
        merge_task_vectors(base, received, MergeConfig(scaling=scaling)) if received else base
    )
    sum_mu = float(np.nansum(error_mse))
    test = partial(
        logit_hypothesis_test,
        lambda_n=scaling,
        sum_mu=sum_mu,
        sum_mu_ref=len(tasks) * cfg.mu_ref,
        beta=cfg.beta,
    )
    jac_key = (*logits.where, tuple(tasks), cfg.probes, seed, logits.digest(undisturbed))
    jac_sq = _JACOBIANS.get(
        jac_key,
        lambda: _jacobians(logits, tasks, clean[0].layout.names, undisturbed, cfg, seed),
    )
    robust: dict[str, float] = {}
    paper: dict[str, float] = {}
    for task in tasks:
        z_u, z_d = logits(undisturbed, task), logits(disturbed, task)
        robust[task] = test(z_u, z_d, jac_sq[task], form="robust").rejection_rate
        paper[task] = test(z_u, z_d, jac_sq[task], form="paper").rejection_rate
    return Analysis(
        wde_clean=wde_clean,
        wde_received=wde_received,
        rejection_robust=robust,
        rejection_paper=paper,
        sum_mu=sum_mu,
        sum_mu_ref=len(tasks) * cfg.mu_ref,
    )


def _jacobian_sq_norm(
    model: torch.nn.Module,
    head: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    probes: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """Eq. 10's ``||J||_F^2`` of the head's logits on ``x`` with respect to ``params``."""

    def fn(p: dict[str, torch.Tensor]) -> torch.Tensor:
        out: torch.Tensor = head(torch.func.functional_call(model, p, (x,)))
        return out

    return jacobian_sq_norm(fn, params, probes=probes, generator=gen)
