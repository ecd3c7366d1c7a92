"""``precision``: bf16 autocast for realignment and evaluation, a setting of each run that
leaves the ids of fp32 runs as they were and never shares a measured accuracy across
precisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from rmtllmf.cli import main
from rmtllmf.defense import RealignConfig
from rmtllmf.study.experiment import ExperimentConfig, receive, run_experiment
from rmtllmf.study.plan import SweepConfig
from rmtllmf.study.store import ResultsDB
from rmtllmf.training.loops import compute_precision


def test_bf16_autocasts_matrix_products_and_fp32_changes_nothing():
    layer = nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with compute_precision("fp32"):
        assert layer(x).dtype == torch.float32
    with compute_precision("bf16"):
        out = layer(x)
        assert out.dtype == torch.bfloat16
        loss = nn.functional.cross_entropy(out, torch.tensor([0, 1, 2]))
        assert loss.dtype == torch.float32  # CPU autocast keeps losses in float32
    assert layer.weight.dtype == torch.float32
    exact = x.to(torch.bfloat16).float() @ layer.weight.to(torch.bfloat16).float().T
    torch.testing.assert_close(out.float(), exact + layer.bias, atol=0.05, rtol=0.02)


def test_a_training_loop_under_bf16_sees_its_own_updates():
    """With autocast's weight cache a loop inside one autocast block would keep using the
    weights' first bf16 copy: it would train blind and drift."""
    layer = nn.Linear(4, 1, bias=False)
    x = torch.ones(1, 4)
    with compute_precision("bf16"):
        layer(x).sum().backward()  # a forward with gradients, as in a realignment step
        with torch.no_grad():
            layer.weight.fill_(2.0)
        assert float(layer(x).detach()) == 8.0


def test_bf16_realignment_learns_where_fp32_does(tiny_zoo):
    realign = RealignConfig(k_per_class=2, steps=10, batch=8, validate_every=5, val_per_task=8)
    cfg = ExperimentConfig(
        tasks=("signs", "textures"), link="noiseless", defense="base+realign", realign=realign
    )
    rx = receive(tiny_zoo, cfg)
    fp32 = run_experiment(tiny_zoo, cfg, rx)
    bf16 = run_experiment(tiny_zoo, cfg.model_copy(update={"precision": "bf16"}), rx)
    curve = [score for _, score in bf16.realign_curve]
    assert max(curve) >= curve[0]
    for task in cfg.tasks:
        assert abs(bf16.accuracy[task] - fp32.accuracy[task]) <= 0.1


def test_fp32_keeps_the_run_ids_it_had_and_bf16_is_a_setting_of_the_run():
    fp32 = ExperimentConfig(tasks=("signs",))
    assert "precision" not in fp32.model_dump_json()
    bf16 = fp32.model_copy(update={"precision": "bf16"})
    assert json.loads(bf16.model_dump_json())["precision"] == "bf16"
    assert ExperimentConfig.model_validate_json(bf16.model_dump_json()) == bf16
    sweep = SweepConfig(tasks=("signs",))
    assert "precision" not in sweep.model_dump_json()
    assert "precision" in SweepConfig(tasks=("signs",), precision="bf16").model_dump_json()


def test_a_reception_keeps_each_precisions_accuracies_apart(tiny_zoo):
    cfg = ExperimentConfig(tasks=("signs", "textures"), scenario="paper-ideal", link="snr")
    rx = receive(tiny_zoo, cfg)
    fp32 = run_experiment(tiny_zoo, cfg, rx)
    bf16 = run_experiment(tiny_zoo, cfg.model_copy(update={"precision": "bf16"}), rx)
    assert {key[1] for key in rx.accuracies} == {"fp32", "bf16"}
    assert fp32.accuracy == run_experiment(tiny_zoo, cfg, rx).accuracy
    for task in cfg.tasks:  # same merged model: bf16 moves accuracy by a few test images at most
        assert abs(bf16.accuracy[task] - fp32.accuracy[task]) <= 0.05


def test_reproduce_precision_flag_reaches_every_run(tmp_path: Path, capsys):
    config = tmp_path / "toy.yaml"
    sweep = {"task_counts": [2], "scenarios": ["ideal"], "links": ["snr"], "k_values": [1]}
    sweep |= {"realign": {"k_per_class": 2, "steps": 2, "batch": 8}, "lambda_grid": [0.5]}
    sweep |= {"analysis": {"samples": 4, "probes": 1}, "spectra": None}
    config.write_text(yaml.safe_dump({"family": "toy-mlp", "sweep": sweep}))
    import toy_family  # noqa: F401  (registers toy-mlp)

    out = tmp_path / "out"
    argv = ["reproduce", "--config", str(config), "--out", str(out), "--precision", "bf16"]
    assert main([*argv, "--cache", str(tmp_path / "c"), "--threads", "1"]) == 0
    assert json.loads((out / "config.json").read_text())["sweep"]["precision"] == "bf16"
    db = ResultsDB(out / "results.db", read_only=True)
    try:
        precisions = {json.loads(r.config.model_dump_json())["precision"] for r in db.rows()}
    finally:
        db.close()
    assert precisions == {"bf16"}


def test_a_bad_precision_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--quick", "--precision", "fp16", "--check"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
