"""Edge users as federated clients: one round equals the study's run; bad replies never merge."""

from __future__ import annotations

import json

import pytest
import torch

from rmtllmf.defense import RealignConfig
from rmtllmf.errors import InputError
from rmtllmf.study.experiment import ExperimentConfig, run_experiment
from rmtllmf.study.federated import check_reply, federated_round, round_seed

TASKS = ("signs", "textures", "counting")
RUN = ExperimentConfig(
    tasks=TASKS,
    scenario="sum-rate",
    link="snr",
    defense="r-mtllmf",
    seed=3,
    realign=RealignConfig(k_per_class=2, steps=4, lr=1e-2, validate_every=2),
)


def _experts(pool):
    return {t: dict(pool.finetuned[t]) for t in TASKS}


def test_check_reply_names_each_defect(tiny_zoo):
    base = tiny_zoo.base_state
    good = dict(tiny_zoo.finetuned["signs"])
    assert check_reply(base, good) is None
    key = next(iter(base))
    assert "missing" in check_reply(base, {k: v for k, v in good.items() if k != key})
    assert "lacks" in check_reply(base, {**good, "extra.weight": torch.zeros(1)})
    wrong = {**good, key: torch.zeros(3, 3)}
    assert "shape" in check_reply(base, wrong)
    nan = {**good, key: good[key].clone()}
    nan[key].view(-1)[0] = float("nan")
    assert "1 NaN/Inf" in check_reply(base, nan)
    integer = {**good, key: good[key].to(torch.int64)}
    assert "dtype" in check_reply(base, integer)


def test_round_one_from_the_base_is_the_studys_run(tiny_zoo):
    """Same tasks, scenario, link, defense and seed: the same channel draw, noise, merge and
    few-shot sample on the same numbers, so the accuracies are equal exactly."""
    outcome = federated_round(tiny_zoo, RUN, tiny_zoo.base_state, _experts(tiny_zoo), 1)
    study = run_experiment(tiny_zoo, RUN)
    assert outcome.accuracy == study.accuracy
    assert outcome.normalized == study.normalized
    metrics = outcome.metrics()
    assert metrics["dropped"] == 0
    assert [metrics[f"mse/{t}"] for t in TASKS] == study.mse.tolist()
    assert all(f"snr_db/{t}" in metrics for t in TASKS)


def test_later_rounds_draw_a_fresh_channel(tiny_zoo):
    assert round_seed(3, 1) == 3
    one = federated_round(tiny_zoo, RUN, tiny_zoo.base_state, _experts(tiny_zoo), 1)
    two = federated_round(tiny_zoo, RUN, tiny_zoo.base_state, _experts(tiny_zoo), 2)
    assert two.config.seed == round_seed(3, 2) != one.config.seed
    assert two.reception.mse.tolist() != one.reception.mse.tolist()


def test_bad_replies_are_dropped_with_their_reason(tiny_zoo):
    replies = _experts(tiny_zoo)
    key = next(iter(replies["textures"]))
    replies["textures"] = {
        **replies["textures"],
        key: torch.full_like(replies["textures"][key], float("nan")),
    }
    replies["digits"] = dict(tiny_zoo.finetuned["signs"])  # not a configured user
    outcome = federated_round(tiny_zoo, RUN, tiny_zoo.base_state, replies, 1)
    assert set(outcome.dropped) == {"textures", "digits"}
    assert "NaN" in outcome.dropped["textures"]
    assert "not one of the configured users" in outcome.dropped["digits"]
    assert outcome.config.tasks == ("signs", "counting")
    kept = run_experiment(tiny_zoo, RUN.model_copy(update={"tasks": ("signs", "counting")}))
    assert outcome.accuracy == kept.accuracy
    with pytest.raises(InputError, match="no client's reply can be merged"):
        federated_round(tiny_zoo, RUN, tiny_zoo.base_state, {"textures": replies["textures"]})


# ---- through Flower's simulation engine -------------------------------------------------------


def _simulate(pool, settings, clients=None, supernodes=3):
    flower_app = pytest.importorskip("rmtllmf.integrations.flower_app", reason="needs flwr")
    from flwr.simulation import run_simulation

    def source(_):
        return pool

    run_simulation(
        server_app=flower_app.server_app(settings, source),
        client_app=clients or flower_app.client_app(settings, source),
        num_supernodes=supernodes,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 1}},
    )
    return json.loads((settings_out(settings)).read_text())


def settings_out(settings):
    from pathlib import Path

    return Path(settings.out) / "rounds.json"


def test_flower_rounds_equal_reproduce_and_drop_bad_clients(tiny_zoo, tmp_path):
    """Two rounds on five nodes: the shipped ClientApp's users of the three configured tasks,
    and two broken clients, one sending NaN, one a tensor of the wrong shape. Both are dropped
    with their reason, every round. Round 1's accuracies equal ``run_experiment``'s for the
    same tasks, scenario, link, defense and seed exactly: the server runs the study's code on
    the same numbers (ArrayRecord carries float32 losslessly). Round 2 merges the clients'
    fine-tunes of round 1's model over a fresh channel draw."""
    flower_app = pytest.importorskip("rmtllmf.integrations.flower_app", reason="needs flwr")
    from flwr.clientapp import ClientApp

    from rmtllmf.integrations.flower import client_reply

    settings = flower_app.FlowerSettings(run=RUN, rounds=2, local_steps=2, out=str(tmp_path))
    honest = flower_app.client_train(settings, lambda _: tiny_zoo)
    app = ClientApp()

    @app.train()
    def train(message, context):
        node = int(context.node_config["partition-id"])
        if node < len(TASKS):
            return honest(message, context)
        state = {k: v.clone() for k, v in tiny_zoo.finetuned["signs"].items()}
        key = sorted(state)[0]
        if node == 3:
            state[key].view(-1)[0] = float("nan")
            return client_reply(message, state, "digits", 1)
        state[key] = torch.zeros(2, 2)
        return client_reply(message, state, "letters", 1)

    record = _simulate(tiny_zoo, settings, clients=app, supernodes=5)
    one, two = record["rounds"]
    study = run_experiment(tiny_zoo, RUN)
    assert one["tasks"] == two["tasks"] == list(TASKS)
    assert {t: one["metrics"][f"accuracy/{t}"] for t in TASKS} == study.accuracy
    assert one["metrics"]["normalized"] == study.normalized
    for r in (one, two):
        assert r["metrics"]["dropped"] == 2
        reasons = list(r["dropped"].values())
        assert len(reasons) == 2
        assert any("1 NaN/Inf" in x for x in reasons)
        assert any("has shape (2, 2)" in x for x in reasons)
    mse = [[r["metrics"][f"mse/{t}"] for t in TASKS] for r in (one, two)]
    assert mse[0] != mse[1]  # round 2 draws a fresh channel
    assert record["settings"]["run"]["seed"] == RUN.seed
