"""Rank spectra of the clean and received task vectors (``rmtllmf.study.spectra``).

* on a planted low-rank case, the spectra equal numpy's ``svdvals`` of each matrix, the
  thresholds equal Gavish & Donoho's and Marchenko-Pastur's closed forms, and exactly the
  planted directions rise above the threshold (none of pure noise);
* the sweep measures them once on the ablation's own receptions (the vectors ``receive``
  delivers, with the BS's noise estimate), stores them and reuses them;
* the memoised parts of a run (the analysis's clean side, a repeated state's accuracy) change
  no number.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import rmtllmf.study.analysis as analysis
import rmtllmf.study.sweep as sweep
from rmtllmf.errors import InputError
from rmtllmf.fusion import VectorLayout
from rmtllmf.study.experiment import (
    ExperimentConfig,
    noise_variances,
    receive,
    run_experiment,
)
from rmtllmf.study.plan import SweepConfig, plan_runs, spectra_receptions
from rmtllmf.study.spectra import (
    SPECTRA_META,
    RankSpectra,
    SpectraConfig,
    clean_spectra,
    received_spectra,
    select_tensors,
)
from rmtllmf.study.store import ResultsDB
from rmtllmf.study.sweep import ensure_spectra, run_sweep
from test_sweep import small_config

LAYOUT = VectorLayout(
    (
        "encoder.layers.0.self_attn.q_proj.weight",
        "encoder.layers.0.self_attn.q_proj.bias",
        "encoder.layers.0.mlp.fc1.weight",
        "embeddings.patch_embedding.weight",
    ),
    ((60, 60), (60,), (90, 45), (6, 2, 3, 3)),
)


def gd_closed_form(m: int, n: int, sigma: float) -> float:
    """Gavish & Donoho (2014), eq. 11, written out: ``lambda*(beta) sqrt(n) sigma``, ``n`` the
    larger side."""
    small, large = sorted((m, n))
    beta = small / large
    lam = math.sqrt(2 * (beta + 1) + 8 * beta / (beta + 1 + math.sqrt(beta**2 + 14 * beta + 1)))
    return lam * math.sqrt(large) * sigma


def planted(rng: np.random.Generator, shape: tuple[int, int], strength: float) -> np.ndarray:
    """A rank-2 matrix whose singular values are ``strength`` and ``strength / 2``."""
    u = np.linalg.qr(rng.standard_normal((shape[0], 2)))[0]
    v = np.linalg.qr(rng.standard_normal((shape[1], 2)))[0]
    return (u * np.array([strength, strength / 2])) @ v.T


def test_planted_spectra_agree_with_numpy_and_the_closed_forms():
    rng = np.random.default_rng(0)
    names = ["encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.0.mlp.fc1.weight"]
    sigmas = [0.01, 0.03]  # two users, each with its own noise
    seg = LAYOUT.segments
    clean, received, noise = [], [], []
    for sigma in sigmas:
        flat = rng.standard_normal(LAYOUT.total) * 1e-3
        for j, shape in ((0, (60, 60)), (2, (90, 45))):
            # strong enough to clear the threshold even at half strength
            strength = 4 * gd_closed_form(*shape, sigma)
            flat[seg[j] : seg[j + 1]] = planted(rng, shape, strength).ravel()
        clean.append(flat)
        received.append(flat + sigma * rng.standard_normal(LAYOUT.total))
        noise.append(np.full(len(LAYOUT.names), sigma**2))
    tensors = clean_spectra(LAYOUT, names, clean)
    rec = received_spectra(
        LAYOUT,
        names,
        list(enumerate(received)),
        noise,
        link="absolute",
        scenario="ideal",
        mse=[s**2 for s in sigmas],
    )
    spectra = RankSpectra(key="k", tasks=("a", "b"), tensors=tensors, receptions=(rec,))
    for t, (j, shape) in enumerate(((0, (60, 60)), (2, (90, 45)))):
        assert tensors[t].shape == shape
        for q in range(2):
            for flats, got in ((clean, tensors[t].clean[q]), (received, rec.received[t][q])):
                matrix = flats[q][seg[j] : seg[j + 1]].reshape(shape)
                np.testing.assert_allclose(got, np.linalg.svdvals(matrix), rtol=1e-10)
            assert spectra.threshold(0, t, q) == pytest.approx(gd_closed_form(*shape, sigmas[q]))
            edge = sigmas[q] * (math.sqrt(shape[0]) + math.sqrt(shape[1]))
            assert spectra.edge(0, t, q) == pytest.approx(edge)
    assert gd_closed_form(60, 60, 1.0) == pytest.approx(4 / math.sqrt(3) * math.sqrt(60))
    (count,) = spectra.counts()
    assert count.values == 2 * (60 + 45)
    assert count.above == count.clean_above == 2 * 2 * 2  # the planted directions, no more
    assert count.above_edge >= count.above
    # pure noise: nothing rises above the threshold, the top sits near the edge
    pure = received_spectra(
        LAYOUT,
        names,
        [(0, 0.02 * rng.standard_normal(LAYOUT.total))],
        [np.full(len(LAYOUT.names), 0.02**2)],
        link="absolute",
        scenario="ideal",
        mse=[0.0004],
    )
    noise_only = RankSpectra("k", ("a",), clean_spectra(LAYOUT, names, clean[:1]), (pure,))
    (count,) = noise_only.counts()
    assert count.above == 0
    ratio_square = 2 / (4 / math.sqrt(3))  # MP edge / threshold for a square matrix
    assert count.received_top == pytest.approx(ratio_square, rel=0.15)


def test_the_stored_form_reads_back():
    rng = np.random.default_rng(1)
    names = select_tensors(LAYOUT, SpectraConfig())
    flats = [rng.standard_normal(LAYOUT.total) for _ in range(2)]
    rec = received_spectra(
        LAYOUT,
        names,
        list(enumerate(flats)),
        [np.full(4, 0.5), np.full(4, 2.0)],
        link="snr",
        scenario="sum-rate",
        mse=[0.1, 0.2],
    )
    spectra = RankSpectra("key", ("a", "b"), clean_spectra(LAYOUT, names, flats), (rec,))
    back = RankSpectra.from_json(json.loads(json.dumps(spectra.to_json())))
    assert back.key == "key" and back.tensors[0].shape == spectra.tensors[0].shape
    for t in range(2):
        for q in range(2):
            got, want = back.receptions[0].received[t][q], rec.received[t][q]
            np.testing.assert_allclose(got, want, rtol=1e-5)
    assert back.counts()[0].values == spectra.counts()[0].values
    with pytest.raises(InputError, match="malformed"):
        RankSpectra.from_json({"key": "k"})


def test_tensor_choice():
    names = select_tensors(LAYOUT, SpectraConfig())
    assert names == ["encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.0.mlp.fc1.weight"]
    layers = VectorLayout(
        tuple(f"encoder.layers.{i}.mlp.fc1.weight" for i in range(12)),
        ((8, 4),) * 12,
    )
    picked = select_tensors(layers, SpectraConfig(tensors=("*fc1.weight",), per_pattern=4))
    assert [int(n.split(".")[2]) for n in picked] == [0, 4, 7, 11]  # evenly spaced, ends kept
    other = select_tensors(LAYOUT, SpectraConfig(tensors=("*nothing*",), per_pattern=1))
    assert other == ["encoder.layers.0.self_attn.q_proj.weight"]  # a stand-in matrix


def test_plan_chooses_the_ablations_receptions():
    cfg = SweepConfig(
        tasks=("signs", "textures", "counting"),
        task_counts=(2, 3),
        links=("snr", "symbol", "weights"),
        scenarios=("ideal", "sum-rate"),
    )
    lambdas = {2: 0.5, 3: 0.3}
    got = spectra_receptions(cfg, lambdas)
    assert [(r.link, r.scenario) for r in got] == [
        ("snr", "ideal"),
        ("snr", "sum-rate"),
        ("weights", "ideal"),
        ("weights", "sum-rate"),
    ]
    ablation = {
        r.config.model_copy(update={"analysis": None}).model_dump_json()
        for r in plan_runs(cfg, lambdas)
        if r.role == "ablation" and r.config.defense == "none"
    }
    assert {r.model_dump_json() for r in got} <= ablation and all(len(r.tasks) == 3 for r in got)
    only = cfg.model_copy(update={"spectra": SpectraConfig(links=("weights",))})
    assert [r.link for r in spectra_receptions(only, lambdas)] == ["weights", "weights"]
    assert spectra_receptions(cfg.model_copy(update={"spectra": None}), lambdas) == []
    with pytest.raises(InputError, match="symbol link has no known noise law"):
        cfg.model_copy(update={"spectra": SpectraConfig(links=("symbol",))}).check()
    with pytest.raises(InputError, match="not in the sweep"):
        cfg.model_copy(update={"extra_defense_links": ("absolute",)}).check()


def test_the_sweep_measures_stores_and_reuses_them(tiny_zoo, tmp_path, monkeypatch):
    cfg = small_config(links=("absolute", "weights", "symbol"), task_counts=(3,), k_values=(2,))
    db = ResultsDB(tmp_path / "r.db")
    lambdas = sweep.ensure_lambdas(tiny_zoo, "zoo", cfg, db)
    spectra = ensure_spectra(tiny_zoo, "zoo", cfg, db, lambdas)
    assert spectra is not None
    stored = RankSpectra.from_json(json.loads(db.meta(SPECTRA_META)))
    assert stored.key == spectra.key
    assert [(r.link, r.scenario) for r in spectra.receptions] == [
        ("absolute", "ideal"),
        ("absolute", "sum-rate"),
        ("weights", "ideal"),
        ("weights", "sum-rate"),
    ]
    # the received spectra are those of the very vectors the run receives
    rcfg = spectra_receptions(cfg, lambdas)[3]
    rx = receive(tiny_zoo, rcfg)
    sigma2 = noise_variances(rcfg, rx, tiny_zoo.base_state)
    layout = rx.clean[0].layout
    seg = layout.segments
    for t, tensor in enumerate(spectra.tensors):
        j = layout.names.index(tensor.name)
        for q, tv in rx.received:
            matrix = tv.flatten()[seg[j] : seg[j + 1]].reshape(tensor.shape)
            got = spectra.receptions[3].received[t][q]
            np.testing.assert_allclose(got, np.linalg.svdvals(matrix.astype(np.float64)))
            assert spectra.receptions[3].sigma[t][q] == pytest.approx(math.sqrt(sigma2[q][j]))

    def no_second_time(*args, **kwargs):
        raise AssertionError("stored spectra were measured again")

    monkeypatch.setattr(sweep, "rank_spectra", no_second_time)
    assert run_sweep(tiny_zoo, "zoo", cfg, db, max_runs=1) == 1
    assert ensure_spectra(tiny_zoo, "zoo", cfg, db, lambdas).key == spectra.key
    db.close()


def test_memoised_work_changes_no_number(tiny_zoo):
    tasks = ("signs", "textures", "counting")
    cfg = ExperimentConfig(
        tasks=tasks,
        scenario="paper-sum-rate",
        link="snr",
        analysis=analysis.AnalysisConfig(samples=8, probes=1),
    )
    analysis._LOGITS.clear()
    analysis._JACOBIANS.clear()
    fresh = run_experiment(tiny_zoo, cfg)
    assert analysis._JACOBIANS  # the clean side is memoised ...
    again = run_experiment(tiny_zoo, cfg.model_copy(update={"scenario": "paper-ideal"}))
    analysis._LOGITS.clear()
    analysis._JACOBIANS.clear()
    cold = run_experiment(tiny_zoo, cfg.model_copy(update={"scenario": "paper-ideal"}))
    assert again.analysis == cold.analysis  # ... and reused bit for bit
    assert fresh.analysis is not None and fresh.analysis.wde_clean == cold.analysis.wde_clean
    # a state met twice on one reception (e.g. a realignment that validation stopped at step 0)
    # is evaluated once, to the same accuracies
    plain = cfg.model_copy(update={"analysis": None})
    rx = receive(tiny_zoo, plain)
    first = run_experiment(tiny_zoo, plain, rx)
    second = run_experiment(tiny_zoo, plain, rx)
    assert len(rx.accuracies) == len(tasks)  # one entry per (split, task, state)
    assert first.accuracy == second.accuracy == run_experiment(tiny_zoo, plain).accuracy
    run_experiment(tiny_zoo, plain.model_copy(update={"defense": "freeze"}), rx)
    assert len(rx.accuracies) == 2 * len(tasks)
