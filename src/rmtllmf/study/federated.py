"""One round of federated multi-task learning over the jammed uplink, on the study's code paths.

A round starts from the global model ``theta_r``. Each client (a user, one task) fine-tunes it
on its task and replies with ``theta_q``. The base station forms ``tau_q = theta_q - theta_r``
(eq. 1 against the round's model), sends the vectors through the uplink of an
:class:`~rmtllmf.study.experiment.ExperimentConfig` (scenario, link, jammer, merge, defense, seed),
merges (eq. 6) and defends (:func:`~rmtllmf.study.experiment.defend`): ``theta_{r+1}``. Round 1
from the base model is the paper's one-shot merge; more rounds are federated multi-task
learning over the jammed uplink, beyond the paper.

Nothing is re-implemented: :class:`RoundPool` shows the server's pool with the round's model as
its base and the replies as its fine-tuned models, and :func:`federated_round` runs
:func:`~rmtllmf.study.experiment.receive` and :func:`~rmtllmf.study.experiment.defend` on it.
Round ``r`` draws its channel and noise with seed ``seed + ROUND_STRIDE (r - 1)``, so round 1 is
exactly the study's run of the same config.

A reply that cannot be merged (:func:`check_reply`: a missing or extra key, a wrong shape, a
non-float tensor, NaN or Inf; a task the config does not list; a second reply for one task) is
dropped with its reason, and the round goes on with the others; a round with none left is an
error naming every reason. Nothing malformed reaches the merge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from rmtllmf.errors import InputError
from rmtllmf.metrics import normalized_accuracy
from rmtllmf.pools.base import ModelPool, PoolRecord, Split
from rmtllmf.study.experiment import ExperimentConfig, Reception, defend, receive
from rmtllmf.training.loops import compute_precision

ROUND_STRIDE = 100_003
"""Seed offset between rounds: each round draws a fresh channel, noise and few-shot sample."""


class RoundPool:
    """The server's pool in one round: ``base_state`` is the round's global model and
    ``finetuned`` the clients' replies; heads, data, evaluation and the fine-tuned reference
    accuracies are the server pool's."""

    def __init__(
        self,
        pool: ModelPool,
        global_state: Mapping[str, torch.Tensor],
        replies: Mapping[str, Mapping[str, torch.Tensor]],
    ) -> None:
        self._pool = pool
        self._global = dict(global_state)
        self._replies = {t: dict(s) for t, s in replies.items()}

    @property
    def finetuned(self) -> Mapping[str, Mapping[str, torch.Tensor]]:
        """The clients' fine-tuned models, by task."""
        return self._replies

    @property
    def heads(self) -> Mapping[str, nn.Module]:
        """The server pool's task heads."""
        return self._pool.heads

    @property
    def data(self) -> Mapping[str, Mapping[str, Split]]:
        """The server pool's task data (the few-shot sets come from it)."""
        return self._pool.data

    @property
    def pool_id(self) -> str:
        """The server pool's identity."""
        return self._pool.pool_id

    @property
    def record(self) -> PoolRecord:
        """The server pool's measured accuracies."""
        return self._pool.record

    @property
    def base_state(self) -> dict[str, torch.Tensor]:
        """A copy of the round's global model."""
        return {k: v.detach().clone() for k, v in self._global.items()}

    @property
    def embedding_names(self) -> tuple[str, ...]:
        """The embeddings R-MTLLMF re-loads (from the round's global model)."""
        return self._pool.embedding_names

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """The server pool's input transform."""
        return self._pool.preprocess(images)

    def n_classes(self, task: str) -> int:
        """Classes of ``task``."""
        return self._pool.n_classes(task)

    def model_from_state(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        """A model of the pool's architecture with ``state`` loaded."""
        return self._pool.model_from_state(state)

    def task_accuracy(
        self, state: Mapping[str, torch.Tensor], tasks: Sequence[str], split: str = "test"
    ) -> dict[str, float]:
        """Accuracy of ``state`` per task (the server pool's data and heads)."""
        return self._pool.task_accuracy(state, tasks, split)

    def finetuned_accuracy(self, task: str, split: str = "test") -> float:
        """The server pool's expert accuracy: the reference of normalized accuracy."""
        return self._pool.finetuned_accuracy(task, split)

    def base_accuracy(self, task: str, split: str = "test") -> float:
        """The server pool's base accuracy."""
        return self._pool.base_accuracy(task, split)


def check_reply(
    global_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> str | None:
    """Why a client's model cannot be merged (``None``: it can): it must have the global
    model's keys, shapes and floating dtypes, and only finite values."""
    missing = sorted(set(global_state) - set(state))
    if missing:
        return f"missing {len(missing)} key(s) of the global model, e.g. {missing[0]!r}"
    extra = sorted(set(state) - set(global_state))
    if extra:
        return f"{len(extra)} key(s) the global model lacks, e.g. {extra[0]!r}"
    for key, ref in global_state.items():
        value = state[key]
        if tuple(value.shape) != tuple(ref.shape):
            return f"{key!r} has shape {tuple(value.shape)}, the global model's {tuple(ref.shape)}"
        if value.is_floating_point() != ref.is_floating_point():
            return f"{key!r} has dtype {value.dtype}, the global model's {ref.dtype}"
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            return f"{key!r} holds {bad} NaN/Inf value(s)"
    return None


@dataclass
class RoundOutcome:
    """What one round did."""

    state: dict[str, torch.Tensor]
    """The new global model."""
    config: ExperimentConfig
    """The round's run: the kept clients' tasks (in the config's order) and the round's seed."""
    reception: Reception
    dropped: dict[str, str] = field(default_factory=dict)
    """Replies left out, by task (or client), with the reason."""
    accuracy: dict[str, float] = field(default_factory=dict)
    """Test accuracy of the new global model per task, where the round evaluated it."""
    normalized: float = math.nan

    def metrics(self) -> dict[str, float]:
        """The round's numbers for a metrics record: each user's MSE ``mu_q`` (eq. 5) and
        measured per-entry SNR (the task vector's power over its received error's; on an
        AirComp link the sum's), BER on the symbol link, the uplink's figures for the sum,
        accuracy and normalized accuracy where evaluated, and how many replies were dropped."""
        rx = self.reception
        out: dict[str, float] = {"dropped": float(len(self.dropped))}
        for q, task in enumerate(self.config.tasks):
            out[f"mse/{task}"] = float(rx.mse[q])
        if rx.aircomp is None:
            for q, task in enumerate(self.config.tasks):
                power = float(np.mean(rx.clean[q].flatten().astype(np.float64) ** 2))
                error = float(rx.error_mse[q])
                if error > 0 and power > 0:
                    out[f"snr_db/{task}"] = 10.0 * math.log10(power / error)
        elif rx.uplink.get("nmse", 0.0) > 0:
            out["snr_db/sum"] = -10.0 * math.log10(rx.uplink["nmse"])
        for q, stats in enumerate(rx.link_stats):
            out[f"ber/{self.config.tasks[q]}"] = stats.ber
        for name, value in rx.uplink.items():
            out[f"uplink/{name}"] = value
        for task, value in self.accuracy.items():
            out[f"accuracy/{task}"] = value
        if not math.isnan(self.normalized):
            out["normalized"] = self.normalized
        return {k: v for k, v in out.items() if math.isfinite(v)}


def round_seed(seed: int, server_round: int) -> int:
    """The seed of round ``server_round`` (1-based) of a run seeded ``seed``."""
    if server_round < 1:
        raise InputError(f"rounds count from 1; got {server_round}")
    return seed + ROUND_STRIDE * (server_round - 1)


def federated_round(
    pool: ModelPool,
    cfg: ExperimentConfig,
    global_state: Mapping[str, torch.Tensor],
    replies: Mapping[str, Mapping[str, torch.Tensor]],
    server_round: int = 1,
    *,
    dropped: Mapping[str, str] | None = None,
    evaluate: bool = True,
) -> RoundOutcome:
    """One round (module docs): the clients' ``replies`` by task, merged over ``cfg``'s uplink
    into the next global model. ``dropped`` carries replies the caller already left out (by
    client) into the outcome; ``evaluate`` measures the new model on each kept task's
    ``cfg.split``."""
    out_dropped = dict(dropped or {})
    kept: dict[str, Mapping[str, torch.Tensor]] = {}
    for task, state in replies.items():
        reason = check_reply(global_state, state)
        if reason is None and task not in cfg.tasks:
            reason = f"task {task!r} is not one of the configured users {list(cfg.tasks)}"
        if reason is None:
            kept[task] = state
        else:
            out_dropped[task] = reason
    if not kept:
        why = "; ".join(f"{k}: {v}" for k, v in out_dropped.items()) or "no client replied"
        raise InputError(f"round {server_round}: no client's reply can be merged ({why})")
    tasks = tuple(t for t in cfg.tasks if t in kept)
    run = cfg.model_copy(update={"tasks": tasks, "seed": round_seed(cfg.seed, server_round)})
    view = RoundPool(pool, global_state, kept)
    rx = receive(view, run)
    defended = defend(view, run, rx)
    outcome = RoundOutcome(defended.state, run, rx, out_dropped)
    if evaluate:
        with compute_precision(run.precision):
            outcome.accuracy = pool.task_accuracy(defended.state, tasks, run.split)
        reference = {t: pool.finetuned_accuracy(t, run.split) for t in tasks}
        outcome.normalized = normalized_accuracy(outcome.accuracy, reference)
    return outcome


__all__ = [
    "ROUND_STRIDE",
    "RoundOutcome",
    "RoundPool",
    "check_reply",
    "federated_round",
    "round_seed",
]
