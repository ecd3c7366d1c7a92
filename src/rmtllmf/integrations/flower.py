"""Flower (``flwr``) clients over the jammed uplink: a strategy that aggregates with the study.

``pip install 'rmtllmf[flower]'``. The seam is Flower's message API: each round the strategy
sends the global model to the clients (``configure_train``); each client fine-tunes it on its
own task and replies with its model and its task (:func:`client_reply`); ``aggregate_train``
hands the replies to :func:`rmtllmf.study.federated.federated_round`, which forms the task
vectors against the round's model, sends them through the configured uplink (an
:class:`~rmtllmf.study.experiment.ExperimentConfig`: scenario, link, jammer, merge, defense,
seed), merges and defends on the study's own code paths, and returns the new global model with
the round's metrics (per-user MSE and per-entry SNR, BER on the symbol link, the uplink's
figures for the sum, accuracies where the server evaluates).

A reply that cannot be merged (an error reply, no model or no task in it, a task the config
does not list or has already, a missing key, a wrong shape, NaN) is dropped, logged with its
reason and counted in the round's ``dropped`` metric; never merged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from rmtllmf.errors import InputError
from rmtllmf.pools.base import ModelPool
from rmtllmf.study.experiment import ExperimentConfig
from rmtllmf.study.federated import RoundOutcome, federated_round

ARRAYS = "arrays"
"""The reply's (and the train message's) ``ArrayRecord`` key: the model."""
CLIENT = "client"
"""The reply's ``ConfigRecord`` key holding ``{"task": name}``: which user this is."""
METRICS = "metrics"
"""The reply's ``MetricRecord`` key (``num-examples``)."""

log = logging.getLogger(__name__)


def client_reply(
    message: Message, state: Mapping[str, torch.Tensor], task: str, num_examples: int
) -> Message:
    """The reply a ClientApp sends after fine-tuning on ``task``: its model, its task and how
    many examples it trained on."""
    content = RecordDict(
        {
            ARRAYS: ArrayRecord({k: v.detach().cpu() for k, v in state.items()}),
            METRICS: MetricRecord({"num-examples": num_examples}),
            CLIENT: ConfigRecord({"task": task}),
        }
    )
    return Message(content=content, reply_to=message)


def read_reply(message: Message) -> tuple[str, dict[str, torch.Tensor]]:
    """The task and model of a client's reply; an :class:`InputError` naming what is missing."""
    content = message.content
    if CLIENT not in content.config_records or "task" not in content.config_records[CLIENT]:
        raise InputError(f"the reply names no task (a ConfigRecord {CLIENT!r} with 'task')")
    task = content.config_records[CLIENT]["task"]
    if not isinstance(task, str):
        raise InputError(f"the reply's task is {task!r}, not a task name")
    if ARRAYS not in content.array_records:
        raise InputError(f"the reply of task {task!r} holds no model (ArrayRecord {ARRAYS!r})")
    try:
        state = content.array_records[ARRAYS].to_torch_state_dict()
    except Exception as exc:  # flwr raises several kinds for arrays torch cannot hold
        raise InputError(f"the model of task {task!r} is not a torch state dict: {exc}") from exc
    return task, state


class JammedUplinkStrategy(FedAvg):
    """FedAvg's sampling and messages, with aggregation over the jammed uplink (module docs).

    ``pool`` is the server's: its heads, its data (the few-shot sets realignment needs, and the
    test splits when ``evaluate``) and its fine-tuned reference accuracies. ``config`` is the
    run every round repeats (round ``r`` with seed ``config.seed + 100003 (r - 1)``). By default
    every round waits for one client per task of ``config``.
    """

    def __init__(
        self,
        pool: ModelPool,
        config: ExperimentConfig,
        *,
        evaluate: bool = True,
        **fedavg: Any,
    ) -> None:
        n = len(config.tasks)
        fedavg.setdefault("min_train_nodes", n)
        fedavg.setdefault("min_available_nodes", n)
        fedavg.setdefault("fraction_evaluate", 0.0)
        super().__init__(**fedavg)
        self.pool = pool
        self.config = config
        self.evaluate_rounds = evaluate
        self.rounds: list[RoundOutcome] = []
        """Every finished round's outcome, in order."""
        self._global: dict[str, torch.Tensor] | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's training messages; the round's global model is kept for the task vectors."""
        self._global = arrays.to_torch_state_dict()
        messages: Iterable[Message] = super().configure_train(server_round, arrays, config, grid)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The replies through the uplink, merged and defended (module docs)."""
        if self._global is None:
            raise InputError("aggregate_train ran before configure_train: no global model")
        replies = list(replies)
        dropped: dict[str, str] = {}
        states: dict[str, dict[str, torch.Tensor]] = {}
        for message in replies:
            who = f"node {message.metadata.src_node_id}"
            if message.has_error():
                dropped[who] = f"error reply: {message.error.reason}"
                continue
            try:
                task, state = read_reply(message)
            except InputError as exc:
                dropped[who] = str(exc)
                continue
            if task in states:
                dropped[f"{who} ({task})"] = f"a second reply for task {task!r}"
                continue
            states[task] = state
        outcome = federated_round(
            self.pool,
            self.config,
            self._global,
            states,
            server_round,
            dropped=dropped,
            evaluate=self.evaluate_rounds,
        )
        for who, reason in outcome.dropped.items():
            log.warning("round %d: dropped %s: %s", server_round, who, reason)
        self.rounds.append(outcome)
        metrics: dict[str, int | float | list[int] | list[float]] = dict(outcome.metrics())
        return ArrayRecord(outcome.state), MetricRecord(metrics)


__all__ = [
    "ARRAYS",
    "CLIENT",
    "METRICS",
    "JammedUplinkStrategy",
    "client_reply",
    "read_reply",
]
