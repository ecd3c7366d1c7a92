"""The defense modules and one experiment run, on a tiny zoo built here."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import build_tiny_zoo
from rmtllmf.defense import (
    FewShotSet,
    RealignConfig,
    apply_defense,
    few_shot_set,
    realign,
    reload_embeddings,
)
from rmtllmf.errors import InputError
from rmtllmf.fusion import MergeConfig, merge_task_vectors
from rmtllmf.models.tiny_vit import EMBEDDING_PARAMS
from rmtllmf.study.clean_merge import task_vectors
from rmtllmf.study.experiment import ExperimentConfig, reception_from, run_experiment

TASKS = ("signs", "textures")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_tiny_zoo(tmp_path_factory.mktemp("zoo"), TASKS)


def test_noiseless_run_is_the_clean_merge(zoo):
    cfg = ExperimentConfig(tasks=TASKS, link="noiseless", merge=MergeConfig(scaling=0.4))
    result = run_experiment(zoo, cfg)
    merged = merge_task_vectors(zoo.base_state, task_vectors(zoo, TASKS), cfg.merge)
    assert result.accuracy == zoo.task_accuracy(merged, TASKS)
    assert result.received_cosine.shape == (2, 2)
    assert result.nonfinite_entries == 0


def test_paper_presets_and_physical_scenarios(zoo):
    preset = run_experiment(zoo, ExperimentConfig(tasks=TASKS, scenario="paper-sum-rate"))
    np.testing.assert_allclose(preset.mse, [0.21, 0.21])
    physical = run_experiment(
        zoo, ExperimentConfig(tasks=TASKS, scenario="strongest-user", link="relative")
    )
    assert physical.mse.shape == (2,)
    assert np.all((physical.mse > 0) & (physical.mse <= 1))
    with pytest.raises(InputError, match="symbol link needs a physical scenario"):
        run_experiment(zoo, ExperimentConfig(tasks=TASKS, scenario="paper-ideal", link="symbol"))
    digital = run_experiment(zoo, ExperimentConfig(tasks=TASKS, link="symbol"))
    ratios = [digital.accuracy[t] / zoo.finetuned_accuracy(t) for t in TASKS]
    assert digital.normalized == pytest.approx(np.mean(ratios))  # eq. 13
    # the digital link quantizes every entry, so nothing arrives exactly
    assert np.all(np.isfinite(digital.error_mse)) and np.all(digital.error_mse > 0)


def test_strong_absolute_noise_destroys_the_merge(zoo):
    clean = run_experiment(zoo, ExperimentConfig(tasks=TASKS, link="noiseless"))
    noisy = run_experiment(zoo, ExperimentConfig(tasks=TASKS, scenario="paper-sum-rate"))
    assert noisy.normalized < clean.normalized
    # the received vectors are dominated by the shared-variance noise: nearly orthogonal
    assert abs(noisy.received_cosine[0, 1]) < 0.05


def test_nan_policies(zoo):
    clean = task_vectors(zoo, TASKS)
    received = [tv.flatten().copy() for tv in clean]
    received[1][:5] = np.nan
    mu = np.zeros(len(TASKS))
    base = ExperimentConfig(tasks=TASKS, link="noiseless")
    with pytest.raises(InputError, match="NaN/Inf"):
        reception_from(base.model_copy(update={"nan_policy": "error"}), clean, received, mu)
    rx = reception_from(base, clean, received, mu)
    zeroed = run_experiment(zoo, base, rx)
    assert zeroed.nonfinite_entries == 5
    assert np.count_nonzero(rx.vectors[1].flatten()[:5]) == 0
    drop = base.model_copy(update={"nan_policy": "drop-user"})
    dropped = run_experiment(zoo, drop, reception_from(drop, clean, received, mu))
    assert dropped.dropped_users == [1]


def test_defenses_touch_the_right_parameters(zoo):
    base = zoo.base_state
    merged = merge_task_vectors(base, task_vectors(zoo, TASKS), MergeConfig(scaling=1.0))
    noisy = {
        k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in merged.items()
    }
    sets = [few_shot_set(t, *zoo.data[t]["train"], 2, zoo.heads[t].n_classes) for t in TASKS]
    cfg = RealignConfig(k_per_class=2, steps=5, lr=1e-2)
    key = "encoder.layers.0.mlp.fc1.weight"
    results = {}
    for defense in ("none", "freeze", "realign", "r-mtllmf"):
        model = zoo.model_from_state(noisy)
        apply_defense(
            defense, model, base, EMBEDDING_PARAMS, zoo.heads, sets, cfg, preprocess=zoo.preprocess
        )
        results[defense] = model.state_dict()
    for name in EMBEDDING_PARAMS:
        assert torch.equal(results["freeze"][name], base[name])
        assert torch.equal(results["r-mtllmf"][name], base[name])  # re-loaded, then frozen
        assert not torch.equal(results["realign"][name], base[name])
    assert torch.equal(results["freeze"][key], noisy[key])
    assert not torch.equal(results["r-mtllmf"][key], noisy[key])
    assert torch.equal(results["none"][key], noisy[key])
    with pytest.raises(InputError, match="unknown defense"):
        apply_defense(
            "magic",
            zoo.model_from_state(noisy),
            base,
            EMBEDDING_PARAMS,
            zoo.heads,
            sets,
            cfg,
            preprocess=zoo.preprocess,
        )
    with pytest.raises(InputError, match="not in both models"):
        reload_embeddings(noisy, base, ["nope"])


def test_snr_links_give_the_papers_per_entry_snr(zoo):
    """Received noise on the snr links against the closed form mu E[tau^2] / S_ref per entry,
    E[tau^2] over the user's whole vector (snr) or over each tensor (snr-tensor), checked on the
    user's tensors of 256+ entries within 3.5 standard errors of a variance estimate."""
    from rmtllmf.channel import PAPER_SIGNAL_POWER
    from rmtllmf.study.experiment import receive

    for link in ("snr", "snr-tensor"):
        cfg = ExperimentConfig(tasks=TASKS, scenario="paper-sum-rate", link=link)
        rx = receive(zoo, cfg)
        for (_, got), tv in zip(rx.received, rx.clean, strict=True):
            flat = tv.flatten().astype(np.float64)
            noise = got.flatten().astype(np.float64) - flat
            whole = np.mean(flat**2)
            for a, b in itertools.pairwise(tv.layout.segments):
                if b - a < 256:
                    continue
                power = np.mean(flat[a:b] ** 2) if link == "snr-tensor" else whole
                expected = 0.21 * power / PAPER_SIGNAL_POWER
                tolerance = 3.5 * np.sqrt(2 / (b - a))
                assert np.mean(noise[a:b] ** 2) == pytest.approx(expected, rel=tolerance)


def test_floor_defenses_discard_what_was_received(zoo):
    base = zoo.base_state
    noisy = {
        k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in base.items()
    }
    sets = [few_shot_set(t, *zoo.data[t]["train"], 2, zoo.heads[t].n_classes) for t in TASKS]
    cfg = RealignConfig(k_per_class=2, steps=5, lr=1e-2)
    model = zoo.model_from_state(noisy)
    apply_defense(
        "base", model, base, EMBEDDING_PARAMS, zoo.heads, sets, cfg, preprocess=zoo.preprocess
    )
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())
    from_noisy, from_base = zoo.model_from_state(noisy), zoo.model_from_state(base)
    for model in (from_noisy, from_base):
        torch.manual_seed(0)
        apply_defense(
            "base+realign",
            model,
            base,
            EMBEDDING_PARAMS,
            zoo.heads,
            sets,
            cfg,
            preprocess=zoo.preprocess,
        )
    a, b = from_noisy.state_dict(), from_base.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # nothing received survives
    key = "encoder.layers.0.mlp.fc1.weight"
    assert not torch.equal(a[key], base[key])
    assert all(torch.equal(a[k], base[k]) for k in EMBEDDING_PARAMS)


def test_validated_realignment_keeps_the_best_state_on_validation(zoo):
    base = zoo.base_state
    sets = [few_shot_set(t, *zoo.data[t]["train"], 2, zoo.heads[t].n_classes) for t in TASKS]
    val = [FewShotSet(t, *zoo.data[t]["val"]) for t in TASKS]
    for lr in (1e-2, 10.0):  # a sane step size and one that wrecks the model
        cfg = RealignConfig(k_per_class=2, steps=6, lr=lr, validate_every=2)
        model = zoo.model_from_state(base)
        log = realign(model, zoo.heads, sets, cfg, preprocess=zoo.preprocess, val_sets=val)
        steps = [step for step, _ in log.curve]
        assert steps == [0, 2, 4, 6]
        scores = [score for _, score in log.curve]
        assert log.kept_step == steps[int(np.argmax(scores))]
        # the kept state scores what the curve says it scored at that step
        expected = np.mean([zoo.task_accuracy(model.state_dict(), [t], "val")[t] for t in TASKS])
        assert expected == pytest.approx(max(scores))
        if log.kept_step == 0:
            assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())
    unvalidated = realign(
        zoo.model_from_state(base),
        zoo.heads,
        sets,
        RealignConfig(k_per_class=2, steps=3),
        preprocess=zoo.preprocess,
    )
    assert unvalidated.curve == [] and unvalidated.kept_step == 3


def test_few_shot_sets_come_from_training_data(zoo):
    x, y = zoo.data["signs"]["train"]
    fs = few_shot_set("signs", x, y, 2, 12)
    assert np.bincount(fs.labels, minlength=12).tolist() == [2] * 12
    train_rows = {img.tobytes() for img in x}
    assert all(img.tobytes() in train_rows for img in fs.images)
    with pytest.raises(InputError, match="fewer than"):
        few_shot_set("signs", x, y, 1000, 12)
    with pytest.raises(InputError, match="not in this model pool"):
        run_experiment(zoo, ExperimentConfig(tasks=("letters",)))


def test_analysis_measures_channel_interference(zoo):
    from rmtllmf.study.analysis import AnalysisConfig

    analysis = AnalysisConfig(samples=16, probes=2)
    clean = run_experiment(
        zoo, ExperimentConfig(tasks=TASKS, link="noiseless", analysis=analysis)
    ).analysis
    assert clean is not None
    # a noiseless link: received == clean, so nothing is rejected and the WDEs coincide
    assert clean.sum_mu == 0.0
    assert clean.wde_received.per_task == clean.wde_clean.per_task
    assert all(r == 0.0 for r in clean.rejection_robust.values())
    hit = run_experiment(
        zoo,
        ExperimentConfig(tasks=TASKS, scenario="paper-sum-rate", analysis=analysis),
    )
    assert hit.analysis is not None
    # absolute link: the measured per-entry error is the injected MSE
    np.testing.assert_allclose(hit.error_mse, [0.21, 0.21], rtol=0.05)
    assert hit.analysis.sum_mu == pytest.approx(0.42, rel=0.05)
    assert hit.analysis.sum_mu_ref == pytest.approx(2 * 0.013)
    summary = hit.analysis.summary()
    assert summary["reject_robust"] > 0.5  # 16x the reference noise
    assert 0.0 <= summary["wde_received"] <= 1.0


def test_defenses_sharing_one_reception_equal_runs_on_their_own(zoo):
    """One reception serves every defense of a channel use (its merge and cosines computed
    once): each run equals the same run on a reception of its own, whatever ran before it."""
    from rmtllmf.study.experiment import receive

    common = {"tasks": TASKS, "link": "snr", "scenario": "sum-rate", "merge": MergeConfig()}
    realign_cfg = RealignConfig(k_per_class=2, steps=4, lr=1e-2)
    configs = [
        ExperimentConfig(defense=d, realign=realign_cfg, **common)
        for d in ("r-mtllmf", "none", "freeze", "shrink", "none")
    ]
    shared = receive(zoo, configs[0])
    for cfg in configs:
        together, alone = run_experiment(zoo, cfg, shared), run_experiment(zoo, cfg)
        assert together.accuracy == alone.accuracy
        np.testing.assert_array_equal(together.received_cosine, alone.received_cosine)
        assert together.realign_curve == alone.realign_curve


def test_every_link_mode_has_one_entry_in_the_link_table():
    from typing import get_args

    from rmtllmf.study.experiment import AWGN_LINKS, LINKS, LinkMode

    assert tuple(LINKS) == get_args(LinkMode)
    assert AWGN_LINKS == ("snr", "snr-tensor", "relative", "weights")
    assert [n for n, link in LINKS.items() if link.scale is None] == ["noiseless", "symbol"]
