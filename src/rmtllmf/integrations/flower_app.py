"""A Flower app: one ClientApp per task fine-tunes the pool's model, the ServerApp merges over
the jammed uplink (:class:`~rmtllmf.integrations.flower.JammedUplinkStrategy`).

``examples/flower`` wraps :func:`server_app` and :func:`client_app` for ``flwr run``; the settings
come from its ``pyproject.toml``'s ``[tool.flwr.app.config]`` (:func:`settings_from_run_config`,
keys in docs/flower.md) or are given directly (tests, ``run_simulation``).

**A client's round.** Node ``i`` (``partition-id``) is the user of task ``tasks[i]``. In round 1
the global model is the base and the client sends its expert: the pool's fine-tune of the base
on its task, what the paper's users bring (``first_round="expert"``), or fine-tunes the base for
``local_steps`` itself (``"finetune"``). In later rounds it fine-tunes the global model for
``local_steps`` steps with the pool's training settings
(:meth:`~rmtllmf.pools.tiny_vit_pool.TinyVitPool.finetune_from`), seeded by task and round.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rmtllmf._io import default_cache, write_text_atomic
from rmtllmf.app.reproduce import ReproduceConfig, build_pool
from rmtllmf.channel import ScenarioConfig
from rmtllmf.errors import InputError
from rmtllmf.fusion import MergeConfig
from rmtllmf.integrations.flower import ARRAYS, JammedUplinkStrategy, client_reply
from rmtllmf.pools.base import ModelPool
from rmtllmf.study.experiment import ExperimentConfig
from rmtllmf.study.federated import ROUND_STRIDE


class FlowerSettings(BaseModel):
    """What the app runs (frozen): the family whose pool it uses, the run every round repeats,
    the rounds and the clients' training."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str = "tiny-vit"
    run: ExperimentConfig
    rounds: int = Field(5, ge=1)
    local_steps: int = Field(100, ge=1, description="a client's fine-tuning steps per round")
    first_round: Literal["expert", "finetune"] = "expert"
    evaluate: bool = True
    out: str | None = Field(None, description="folder for rounds.json (None: not written)")


RUN_CONFIG_KEYS = {
    "family": "the pool's family (tiny-vit)",
    "tasks": "comma-separated tasks, one client each (default: the pool's suite)",
    "rounds": "federated rounds",
    "scenario": "ExperimentConfig.scenario",
    "link": "ExperimentConfig.link",
    "defense": "ExperimentConfig.defense",
    "merge-method": "ExperimentConfig.merge.method",
    "lambda": "ExperimentConfig.merge.scaling",
    "jnr-db": "ExperimentConfig.channel.jnr_db",
    "seed": "ExperimentConfig.seed (round r: seed + 100003 (r - 1))",
    "precision": "ExperimentConfig.precision",
    "local-steps": "a client's fine-tuning steps in rounds after the first",
    "first-round": "expert (send the pool's expert) or finetune",
    "evaluate": "the server scores each round's model on the test splits",
    "out": "folder for rounds.json",
}
"""The ``[tool.flwr.app.config]`` keys :func:`settings_from_run_config` reads."""


def settings_from_run_config(config: Mapping[str, Any]) -> FlowerSettings:
    """The settings of a Flower run config (:data:`RUN_CONFIG_KEYS`); an error names an unknown
    key or a bad value."""
    unknown = sorted(set(config) - set(RUN_CONFIG_KEYS))
    if unknown:
        raise InputError(
            f"run config keys {unknown} are not rmtllmf's; known: {', '.join(RUN_CONFIG_KEYS)}"
        )
    family = str(config.get("family", "tiny-vit"))
    tasks = config.get("tasks") or ",".join(_suite(family))
    run: dict[str, Any] = {"tasks": tuple(t.strip() for t in str(tasks).split(",") if t.strip())}
    for key in ("scenario", "link", "defense", "seed", "precision"):
        if key in config:
            run[key] = config[key]
    if "merge-method" in config or "lambda" in config:
        run["merge"] = MergeConfig(
            method=str(config.get("merge-method", "task-arithmetic")),
            scaling=float(config.get("lambda", 0.3)),
        )
    if "jnr-db" in config:
        run["channel"] = ScenarioConfig(jnr_db=float(config["jnr-db"]))
    out = config.get("out") or None
    try:
        return FlowerSettings(
            family=family,
            run=ExperimentConfig(**run),
            rounds=config.get("rounds", 5),
            local_steps=config.get("local-steps", 100),
            first_round=config.get("first-round", "expert"),
            evaluate=config.get("evaluate", True),
            out=None if out is None else str(out),
        )
    except ValidationError as exc:
        raise InputError(f"the Flower run config is not valid: {exc}") from None


def _suite(family: str) -> list[str]:
    study = ReproduceConfig(family=family)
    return list(study.entry.tasks(study.pool_config()))


@lru_cache(maxsize=2)
def load_pool(family: str) -> ModelPool:
    """The family's default pool from the rmtllmf cache (built there on first use), once per
    process."""
    return build_pool(ReproduceConfig(family=family), default_cache(), progress=False)


class FineTunable(Protocol):
    """A pool whose users can fine-tune a given model on their task (the tiny-vit pool)."""

    def finetune_from(
        self, state: Mapping[str, torch.Tensor], task: str, seed: int, steps: int | None = None
    ) -> dict[str, torch.Tensor]: ...


PoolSource = Callable[[FlowerSettings], ModelPool]


def _default_source(settings: FlowerSettings) -> ModelPool:
    return load_pool(settings.family)


def server_app(
    settings: FlowerSettings | None = None, pool: PoolSource = _default_source
) -> ServerApp:
    """The ServerApp: :class:`JammedUplinkStrategy` for ``settings.rounds`` rounds from the
    pool's base model; with ``settings.out``, ``rounds.json`` holds every round's metrics and
    the resolved settings."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        chosen = settings or settings_from_run_config(context.run_config)
        source = pool(chosen)
        strategy = JammedUplinkStrategy(source, chosen.run, evaluate=chosen.evaluate)
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(source.base_state),
            num_rounds=chosen.rounds,
            train_config=ConfigRecord({"local-steps": chosen.local_steps}),
        )
        if chosen.out is not None:
            rounds = [
                {
                    "round": r,
                    "tasks": list(o.config.tasks),
                    "dropped": o.dropped,
                    "metrics": o.metrics(),
                }
                for r, o in enumerate(strategy.rounds, start=1)
            ]
            record = {"settings": chosen.model_dump(mode="json"), "rounds": rounds}
            out = Path(chosen.out)
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / "rounds.json", json.dumps(record, indent=2))

    return app


def client_app(
    settings: FlowerSettings | None = None, pool: PoolSource = _default_source
) -> ClientApp:
    """The ClientApp: the user of task ``tasks[partition-id]`` (module docs)."""
    app = ClientApp()
    app.train()(client_train(settings, pool))
    return app


def client_train(
    settings: FlowerSettings | None = None, pool: PoolSource = _default_source
) -> Callable[[Message, Context], Message]:
    """What :func:`client_app`'s ClientApp does with a train message (module docs)."""

    def train(message: Message, context: Context) -> Message:
        chosen = settings or settings_from_run_config(context.run_config)
        source = pool(chosen)
        tasks = chosen.run.tasks
        task = tasks[int(context.node_config["partition-id"]) % len(tasks)]
        config = message.content.config_records["config"]
        server_round = _integer(config.get("server-round", 1))
        steps = _integer(config.get("local-steps", chosen.local_steps))
        start = message.content.array_records[ARRAYS].to_torch_state_dict()
        images = source.data[task]["train"][0]
        if server_round == 1 and chosen.first_round == "expert" and _is_base(start, source):
            state = {k: v.clone() for k, v in source.finetuned[task].items()}
        else:
            trainable = _fine_tunable(source, chosen.family)
            seed = chosen.run.seed * 1000 + tasks.index(task) + ROUND_STRIDE * server_round
            state = trainable.finetune_from(start, task, seed, steps)
        return client_reply(message, state, task, len(images))

    return train


def _integer(value: object) -> int:
    if not isinstance(value, int):
        raise InputError(f"expected an integer in the train message's config, got {value!r}")
    return value


def _is_base(state: Mapping[str, torch.Tensor], pool: ModelPool) -> bool:
    base = pool.base_state
    return set(base) == set(state) and all(torch.equal(base[k], state[k]) for k in base)


def _fine_tunable(pool: ModelPool, family: str) -> FineTunable:
    if not callable(getattr(pool, "finetune_from", None)):
        raise InputError(
            f"the {family} pool's users cannot fine-tune on a client here; set first-round "
            "'expert' and rounds 1, or use the tiny-vit family"
        )
    result: FineTunable = pool  # type: ignore[assignment]
    return result


__all__ = [
    "RUN_CONFIG_KEYS",
    "FlowerSettings",
    "client_app",
    "client_train",
    "load_pool",
    "server_app",
    "settings_from_run_config",
]
