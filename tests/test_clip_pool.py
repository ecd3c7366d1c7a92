"""hf-clip through the whole study: configs/paper-clip-vit-b16.yaml on tiny local stand-ins
(a random CLIP saved in HF format, perturbed fine-tunes, HF datasets saved to disk)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="hf-clip needs transformers")
datasets = pytest.importorskip("datasets", reason="hf-clip data needs datasets")

from rmtllmf.app.reproduce import load_config, reproduce, sweep_config  # noqa: E402
from rmtllmf.errors import CheckpointError, InputError  # noqa: E402
from rmtllmf.pools.clip_pool import ClipPool, ClipPoolConfig, ClipTaskSpec  # noqa: E402

PAPER_CONFIG = Path(__file__).parents[1] / "configs" / "paper-clip-vit-b16.yaml"


def _dataset(root: Path, classes: list[str], seed: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)}
    )
    splits = {}
    for split, n in (("train", 40), ("test", 12)):
        labels = [i % len(classes) for i in range(n)]
        images = []
        for y in labels:
            arr = rng.integers(0, 80, (24, 24, 3)).astype(np.uint8)
            arr[..., y % 3] = 200
            images.append(Image.fromarray(arr))
        splits[split] = datasets.Dataset.from_dict(
            {"image": images, "label": labels}, features=features
        )
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return root


@pytest.fixture(scope="module")
def stand_in(tiny_clip, tmp_path_factory):
    """The paper config with every hub id replaced by a local stand-in, and a tiny sweep."""
    clip_root, fts, _ = tiny_clip
    root = tmp_path_factory.mktemp("clip_data")
    paper = load_config(PAPER_CONFIG)
    assert paper.clip is not None
    names = list(paper.clip.tasks)[:2]  # sun397, stanford-cars
    tasks = {
        name: paper.clip.tasks[name].model_copy(
            update={
                "finetuned": str(ft),
                "dataset": str(_dataset(root / name, ["red", "green", "blue"], i)),
            }
        )
        for i, (name, ft) in enumerate(zip(names, fts, strict=True))
    }
    clip = paper.clip.model_copy(
        update={"base": str(clip_root / "base"), "tasks": tasks, "n_train": None, "batch": 16}
    )
    sweep = {
        **paper.sweep,
        "task_counts": [2],
        "scenarios": ["ideal", "sum-rate"],
        "links": ["absolute", "symbol"],
        "k_values": [1],
        "realign": {**paper.sweep["realign"], "k_per_class": 2, "steps": 2, "batch": 8},
        "analysis": {"samples": 4, "probes": 1},
        "lambda_grid": [0.0, 0.5, 1.0],
    }
    return paper.model_copy(update={"clip": clip, "sweep": sweep})


def test_paper_config_resolves_to_the_papers_setting():
    paper = load_config(PAPER_CONFIG)
    assert paper.family == "hf-clip" and paper.clip is not None
    assert paper.clip.base == "openai/clip-vit-base-patch16"
    assert all(
        spec.finetuned == f"tanganke/clip-vit-base-patch16_{task}"
        for task, spec in paper.clip.tasks.items()
    )
    sweep = sweep_config(paper)
    assert len(sweep.tasks) == 8 and sweep.task_counts == (2, 3, 4, 5, 6, 7, 8)
    assert sweep.subsets_per_count is None  # all 247 subsets


def test_vision_encoder_matches_the_hf_pooled_output(stand_in, tmp_path):
    pool = ClipPool(stand_in.clip, cache_dir=tmp_path)
    x = pool.preprocess(torch.from_numpy(pool.data["sun397"]["test"][0][:3]))
    ours = pool.model_from_state(pool.base_state)(x)
    with torch.inference_mode():
        ref = pool.clip.model.vision_model(pixel_values=x).pooler_output
    torch.testing.assert_close(ours, ref)
    assert set(pool.base_state) == set(pool.finetuned["sun397"])
    assert pool.n_classes("sun397") == 3
    assert 0.0 <= pool.finetuned_accuracy("sun397") <= 1.0
    cached = json.loads((tmp_path / f"{pool.pool_id}.json").read_text())
    assert cached["finetuned"]["sun397"]["test"] == pool.finetuned_accuracy("sun397")


def test_paper_config_runs_end_to_end_on_stand_ins(stand_in, tmp_path):
    summary = reproduce(stand_in, tmp_path / "out", cache=tmp_path / "cache", progress=False)
    assert summary["n_tasks"] == 2
    assert set(summary["by_link"]) == {"absolute", "symbol"}
    for by_s in summary["by_link"].values():
        for d in by_s.values():
            assert set(d) == {"none", "freeze", "realign", "r-mtllmf", "base", "base+realign"}
            assert all(0.0 <= v <= 2.0 for v in d.values())
    assert (tmp_path / "out" / "report.md").exists()
    assert (tmp_path / "out" / "fig5_ablation.png").exists()
    resolved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert resolved["reproduce"]["family"] == "hf-clip"


def test_bad_clip_inputs(stand_in, tmp_path):
    spec = stand_in.clip.tasks["sun397"]
    with pytest.raises(CheckpointError, match="nor in the local Hugging Face cache"):
        ClipPool(
            ClipPoolConfig(
                base=stand_in.clip.base,
                tasks={"x": spec.model_copy(update={"finetuned": "nobody/not-a-model"})},
            )
        )
    with pytest.raises(InputError, match="class names"):
        ClipPool(
            stand_in.clip.model_copy(
                update={"tasks": {"x": ClipTaskSpec(**{**spec.model_dump(), "classnames": ("a",)})}}
            )
        )
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: hf-clip\nclip:\n  tasks: {}\n  unknown_key: 1\n")
    with pytest.raises(InputError, match="unknown_key"):
        load_config(bad)
