"""Building and reusing the embedded zoo with a tiny base made in the test."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_tiny_base, tiny_zoo_config
from rmtllmf.models.tiny_vit import TinyVitConfig
from rmtllmf.pools.tiny_vit_pool import ZooConfig, build_zoo, load_base


def test_zoo_builds_caches_and_resumes(tmp_path):
    cfg = tiny_zoo_config(tmp_path, ("signs", "counting"), n_train=64, n_test=32, steps=2)
    assert cfg.base is not None and load_base(cfg.base).config.hidden == 16
    zoo = build_zoo(tmp_path / "zoo", cfg)
    record = json.loads((zoo.root / "zoo.json").read_text())
    assert set(record["finetuned"]) == {"signs", "counting"}
    assert record["config"]["steps"] == 2
    for task in cfg.tasks:
        assert 0.0 <= zoo.finetuned_accuracy(task) <= 1.0
        assert zoo.heads[task].weight.shape[0] == {"signs": 12, "counting": 8}[task]
        assert len(zoo.data[task]["head"][0]) == 2 * zoo.heads[task].weight.shape[0]
    stamp = (zoo.root / "finetuned" / "signs.safetensors").stat().st_mtime_ns
    again = build_zoo(tmp_path / "zoo", cfg)
    assert (again.root / "finetuned" / "signs.safetensors").stat().st_mtime_ns == stamp
    accs = again.task_accuracy(again.finetuned["signs"], ["signs"])
    assert accs["signs"] == zoo.finetuned_accuracy("signs")
    other = build_zoo(tmp_path / "zoo", cfg.model_copy(update={"steps": 3}))
    assert other.root != zoo.root  # a different config never reuses another's files


def test_zoo_cli_reports_the_clean_merge(tmp_path, capsys):
    from rmtllmf.cli import main

    base = make_tiny_base(tmp_path / "base.safetensors")
    args = [
        "zoo",
        "build",
        "--root",
        str(tmp_path / "z"),
        "--tasks",
        "signs",
        "textures",
        "--steps",
        "2",
        "--n-train",
        "64",
        "--base",
        str(base),
        "--threads",
        "1",
        "--workers",
        "2",
        "--json",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.0 <= out["lambda"] <= 1.0
    assert set(out["merged_test"]) == {"signs", "textures"}
    assert len(out["cosine"]) == 2
    assert out["cosine"][0][0] == 1.0 or out["cosine"][0][0] > 0.999


def test_zoo_pretrains_and_caches_a_base_when_none_is_shipped(tmp_path, monkeypatch):
    import rmtllmf.pools.zoo_config as zoo_module
    from rmtllmf.training.pretrain import PretrainConfig

    monkeypatch.setattr(zoo_module, "shipped_base_path", lambda: tmp_path / "not-shipped")
    tiny = TinyVitConfig(patch_size=8, hidden=16, layers=1, heads=2, mlp=32, embed_dim=8)
    cfg = ZooConfig(
        tasks=("textures",),
        n_train=32,
        n_val=16,
        n_test=16,
        head_per_class=2,
        steps=1,
        batch=8,
        anchor_images=8,
        pretrain=PretrainConfig(model=tiny, images=64, held_out=32, steps=2, batch=16),
    )
    zoo = build_zoo(tmp_path / "zoo", cfg)
    bases = list((tmp_path / "zoo" / "base").glob("tiny_vit_base-*.safetensors"))
    assert len(bases) == 1
    record = json.loads(bases[0].with_suffix(".json").read_text())
    assert set(record["pretext_probe_accuracy"]) >= {"glyph", "texture", "count"}
    assert zoo.base.config.hidden == 16
    stamp = bases[0].stat().st_mtime_ns
    build_zoo(tmp_path / "zoo", cfg)
    assert bases[0].stat().st_mtime_ns == stamp  # pretrained once, then reused


def test_shipped_base_is_what_the_pretraining_script_makes():
    """The package ships the tiny base; its recorded config is PretrainConfig's defaults, so
    `python scripts/pretrain_tiny_base.py` (1 thread, seeded) reproduces it."""
    from safetensors import safe_open

    from rmtllmf.pools.tiny_vit_pool import shipped_base_path
    from rmtllmf.training.pretrain import PretrainConfig

    path = shipped_base_path()
    assert path.exists(), "run scripts/pretrain_tiny_base.py to make the shipped base"
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {})["rmtllmf"])
    assert meta["pretrain"] == PretrainConfig().model_dump()
    model = load_base()
    assert model.config == PretrainConfig().model.model_copy()
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


@pytest.mark.parametrize(
    ("trainable", "part"),
    [("blocks", "encoder.layers."), ("attention", ".self_attn."), ("mlp", ".mlp.")],
)
def test_partial_fine_tuning_leaves_the_rest_at_the_base(tmp_path, trainable, part):
    cfg = tiny_zoo_config(tmp_path, ("signs",), trainable=trainable, lr=1e-2)
    zoo = build_zoo(tmp_path / "zoo", cfg)
    base, ft = zoo.base_state, zoo.finetuned["signs"]
    changed = {k for k in base if not torch.equal(base[k], ft[k])}
    assert changed and all(k.startswith("encoder.layers.") and part in k for k in changed)


def test_head_scale_reaches_heads_and_fine_tuning(tmp_path):
    """The prototype heads carry ``head_scale`` and the fine-tune trains against it."""
    zoos = {
        scale: build_zoo(
            tmp_path / f"zoo{scale}",
            tiny_zoo_config(tmp_path, ("signs",), head_scale=scale, head_fit="prototype"),
        )
        for scale in (7.0, 30.0)
    }
    assert zoos[7.0].heads["signs"].scale == 7.0
    assert torch.equal(zoos[7.0].heads["signs"].weight, zoos[30.0].heads["signs"].weight)
    ft7, ft30 = zoos[7.0].finetuned["signs"], zoos[30.0].finetuned["signs"]
    assert any(not torch.equal(ft7[k], ft30[k]) for k in ft7)


def test_anchor_is_built_once_and_keeps_the_shared_function(tmp_path):
    """The anchor set is pretext images and public images of the tasks' domains, with the
    base's normalised embeddings as targets; a heavier anchor leaves the anchor images'
    embeddings closer to the base's, and weight 0 is plain fine-tuning with no anchor files."""
    import numpy as np
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from rmtllmf.training.loops import embed

    shifts = {}
    for weight in (100.0, 0.0):
        cfg = tiny_zoo_config(tmp_path, ("signs",), lr=1e-2, steps=6, anchor_weight=weight)
        zoo = build_zoo(tmp_path / "zoo", cfg)
        anchor_file = zoo.root / "data" / "anchor.npz"
        assert anchor_file.exists() == (weight > 0)
        if weight == 0:
            with np.load(tmp_path / "a.npz") as z:
                images = z["images"]
        else:
            with np.load(anchor_file) as z:
                images = z["images"]
            np.savez(tmp_path / "a.npz", images=images)
            targets = load_file(zoo.root / "anchor.safetensors")["targets"]
            expected = F.normalize(embed(zoo.base, images), dim=-1)
            torch.testing.assert_close(targets, expected)
            assert images.shape == (24 + 4, 32, 32, 3)  # pretext, then 4 of the task's domain
        z0 = F.normalize(embed(zoo.base, images), dim=-1)
        z1 = F.normalize(embed(zoo.model_from_state(zoo.finetuned["signs"]), images), dim=-1)
        shifts[weight] = float((z1 - z0).pow(2).sum(-1).mean())
    assert shifts[100.0] < 0.5 * shifts[0.0]


def test_parallel_build_equals_the_serial_one(tmp_path):
    """Worker processes (spawned, one thread each) generate the same data and anchor and
    fine-tune to the same weights as one single-threaded process."""
    cfg = tiny_zoo_config(tmp_path, ("signs", "textures"), steps=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = build_zoo(tmp_path / "serial", cfg)
    finally:
        torch.set_num_threads(threads)
    parallel = build_zoo(tmp_path / "parallel", cfg, workers=2)
    for task in cfg.tasks:
        for split in ("train", "test"):
            assert (serial.data[task][split][0] == parallel.data[task][split][0]).all()
        for key, value in serial.finetuned[task].items():
            torch.testing.assert_close(parallel.finetuned[task][key], value, rtol=1e-5, atol=1e-6)


def test_each_user_anchors_on_the_other_domains_never_its_own(tmp_path):
    from rmtllmf.data.synthetic import make_task
    from rmtllmf.pools.zoo_data import load_anchor

    tasks = ("signs", "counting", "textures")
    cfg = tiny_zoo_config(tmp_path, tasks, anchor_domain_images=5, head_fit="probe")
    zoo = build_zoo(tmp_path / "zoo", cfg)
    whole = load_anchor(cfg, zoo.root)
    assert whole is not None and len(whole.images) == cfg.anchor_images + 5 * len(tasks)
    for task in tasks:
        anchor = load_anchor(cfg, zoo.root, task)
        assert anchor is not None and len(anchor.images) == cfg.anchor_images + 5 * 2
        own = {img.tobytes() for img in make_task(task, "public", 5, cfg.seed)[0]}
        others = {img.tobytes() for t in tasks if t != task for img in make_task(t, "public", 5)[0]}
        kept = {img.tobytes() for img in anchor.images}
        assert not own & kept and others <= kept
        # targets stay paired with their images: the base's normalised embeddings
        expected = torch.nn.functional.normalize(
            zoo.base(zoo.preprocess(torch.from_numpy(anchor.images))), dim=-1
        )
        torch.testing.assert_close(anchor.targets, expected, rtol=1e-4, atol=1e-5)


def test_choose_lambda_hands_the_method_options_to_every_grid_point():
    from rmtllmf.study.clean_merge import LambdaJob, choose_lambda

    seen: list[LambdaJob] = []

    def record(fn, jobs):
        seen.extend(jobs)
        return [-abs(job.scaling - 1.2) for job in jobs]

    grid = [0.4, 0.8, 1.2, 1.6]
    best, scores = choose_lambda(
        None, ("a", "b"), "ties", grid, options={"density": 0.5}, map_calls=record
    )
    assert best == 1.2 and list(scores) == grid
    assert [job.scaling for job in seen] == grid
    for job in seen:
        config = job.merge_config()
        assert config.method == "ties" and config.options == {"density": 0.5, "merge": "mean"}


def test_clean_merge_by_ties_reports_the_merge_it_chose(tiny_zoo):
    from rmtllmf.fusion import MergeConfig, merge_task_vectors
    from rmtllmf.metrics import normalized_accuracy
    from rmtllmf.study.clean_merge import (
        LambdaJob,
        evaluate_clean_merge,
        lambda_score,
        task_vectors,
    )

    tasks = tuple(tiny_zoo.config.tasks)
    grid = [0.5, 1.0, 1.5]
    report = evaluate_clean_merge(tiny_zoo, tasks, "ties", grid, options={"density": 0.3})
    job_options = (("density", 0.3), ("merge", "mean"))
    for lam in grid:  # each grid point scored by TIES at density 0.3, written out here
        job = LambdaJob(tasks, "ties", lam, job_options)
        assert report.val_normalized[lam] == lambda_score(tiny_zoo, job)
    assert report.val_normalized[report.scaling] == max(report.val_normalized.values())
    assert report.merge == MergeConfig(
        method="ties", scaling=report.scaling, options={"density": 0.3}
    )
    merged = merge_task_vectors(
        tiny_zoo.base_state,
        task_vectors(tiny_zoo, tasks),
        MergeConfig(method="ties", scaling=report.scaling, options={"density": 0.3}),
    )
    test = tiny_zoo.task_accuracy(merged, tasks, "test")
    assert report.test_accuracy == test
    ft = {t: tiny_zoo.finetuned_accuracy(t, "test") for t in tasks}
    assert report.normalized == normalized_accuracy(test, ft)
