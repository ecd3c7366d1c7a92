"""hf-clip end to end on a tiny random CLIP written to disk by the test (no network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers", reason="hf-clip needs transformers")

from rmtllmf.data.real import load_hf_dataset, load_image_folder  # noqa: E402
from rmtllmf.errors import CheckpointError, InputError  # noqa: E402
from rmtllmf.fusion import MergeConfig, TaskVector, merge_task_vectors  # noqa: E402
from rmtllmf.models.hf_clip import EMBEDDING_PARAMS, HfClip, finetuned_id, vision_state  # noqa: E402


def test_end_to_end_merge_and_zero_shot_evaluation(tiny_clip):
    root, fts, folder = tiny_clip
    clip = HfClip.from_pretrained(root / "base", offline=True)
    data = load_image_folder(folder, clip.image_size)
    assert data.classnames == ("blue", "red")
    assert data.images.shape == (8, 32, 32, 3)
    head = clip.zero_shot_head(data.classnames)
    assert head.n_classes == 2
    assert head.scale == pytest.approx(float(clip.model.logit_scale.detach().exp()))
    base_acc = clip.accuracy(head, data.images, data.labels)
    assert 0.0 <= base_acc <= 1.0

    base_vision = clip.vision_state()
    for name in EMBEDDING_PARAMS:
        assert name in base_vision
    tvs = [TaskVector.from_models(base_vision, vision_state(f)) for f in fts]
    assert "embeddings.position_ids" not in tvs[0].tensors  # integer buffer never enters
    merged = merge_task_vectors(base_vision, tvs, MergeConfig(scaling=0.5))
    clip.load_vision_state(merged)
    loaded = clip.vision_state()
    key = "encoder.layers.0.mlp.fc1.weight"
    expected = base_vision[key] + 0.5 * (tvs[0].tensors[key] + tvs[1].tensors[key])
    torch.testing.assert_close(loaded[key], expected)
    assert 0.0 <= clip.accuracy(head, data.images, data.labels) <= 1.0


def test_bad_inputs_are_clear(tiny_clip, tmp_path):
    root, _, folder = tiny_clip
    clip = HfClip.from_pretrained(root / "base")
    data = load_image_folder(folder, clip.image_size)
    with pytest.raises(InputError, match="class names and the dataset disagree"):
        clip.accuracy(clip.zero_shot_head(["only one"]), data.images, data.labels)
    with pytest.raises(CheckpointError, match="offline"):
        HfClip.from_pretrained(tmp_path / "missing", offline=True)
    with pytest.raises(CheckpointError, match="vision-tower"):
        vision_state({"foo.weight": torch.zeros(2)})
    with pytest.raises(InputError, match="does not exist"):
        load_image_folder(tmp_path / "nope", 32)
    assert finetuned_id("vit-b-16", "mnist") == "tanganke/clip-vit-base-patch16_mnist"


def test_hf_dataset_from_disk_with_carved_validation(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(20)]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    ds = datasets.Dataset.from_dict(
        {"image": images, "label": [i % 3 for i in range(20)]}, features=features
    )
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "ds"))
    train = load_hf_dataset(tmp_path / "ds", "train", 16)
    val = load_hf_dataset(tmp_path / "ds", "validation", 16)
    assert val.classnames == ("a", "b", "c")
    assert len(train.labels) + len(val.labels) == 20
    assert len(val.labels) == 2  # 10% of train, fixed seed
    assert train.images.shape[1:] == (16, 16, 3)
    again = load_hf_dataset(tmp_path / "ds", "validation", 16)
    np.testing.assert_array_equal(again.images, val.images)
    with pytest.raises(InputError, match="no split 'test'"):
        load_hf_dataset(tmp_path / "ds", "test", 16)


def _finetune_args(root, folder, steps):
    """``rmtllmf finetune`` on the tiny CLIP and its image folder, one thread, batch 4."""
    return [
        "finetune",
        "--family",
        "hf-clip",
        "--base",
        str(root / "base"),
        "--train-folder",
        str(folder),
        "--steps",
        str(steps),
        "--batch",
        "4",
        "--threads",
        "1",
    ]


def test_finetune_command_full_and_lora(tiny_clip, tmp_path):
    pytest.importorskip("peft", reason="LoRA needs peft")
    from rmtllmf.cli import main

    root, _, folder = tiny_clip
    common = _finetune_args(root, folder, steps=3)
    assert main([*common, "--lr", "1e-3", "--out", str(tmp_path / "full")]) == 0
    full = TaskVector.load(tmp_path / "full" / "task_vector.safetensors")
    assert full.norm() > 0
    record = json.loads((tmp_path / "full" / "finetune.json").read_text())
    assert record["finetune"]["steps"] == 3
    state = vision_state(tmp_path / "full" / "model.safetensors")  # FusionBench-style keys
    assert "embeddings.patch_embedding.weight" in state

    assert (
        main(
            [*common, "--lora", "--lora-rank", "2", "--lr", "1e-2", "--out", str(tmp_path / "lora")]
        )
        == 0
    )
    lora = TaskVector.load(tmp_path / "lora" / "task_vector.safetensors")
    q = lora.tensors["encoder.layers.0.self_attn.q_proj.weight"]
    assert q.abs().max() > 0
    assert torch.linalg.matrix_rank(q, rtol=1e-4) <= 2  # a merged rank-2 adapter
    assert lora.tensors["encoder.layers.0.mlp.fc1.weight"].abs().max() == 0  # not a LoRA target


def test_finetune_command_anchored(tiny_clip, tmp_path, capsys):
    """An anchored fine-tune records its anchor; asking for one without images is an error
    that names the fix."""
    from rmtllmf.cli import main

    root, _, folder = tiny_clip
    common = [*_finetune_args(root, folder, steps=2), "--lr", "1e-3", "--anchor-weight", "5"]
    assert main([*common, "--out", str(tmp_path / "no-anchor")]) == 2
    assert "--anchor-folder" in capsys.readouterr().err
    plain = _finetune_args(root, folder, steps=2)
    assert main([*plain, "--anchor-folder", str(folder), "--out", str(tmp_path / "b")]) == 2
    assert "--anchor-weight" in capsys.readouterr().err
    assert main([*common, "--anchor-folder", str(folder), "--out", str(tmp_path / "a")]) == 0
    record = json.loads((tmp_path / "a" / "finetune.json").read_text())
    assert record["finetune"]["anchor_weight"] == 5.0
    assert TaskVector.load(tmp_path / "a" / "task_vector.safetensors").norm() > 0


def test_evaluate_command_reports_normalized_accuracy(tiny_clip, capsys):
    from rmtllmf.cli import main

    root, fts, folder = tiny_clip
    args = [
        "evaluate",
        "--family",
        "hf-clip",
        "--base",
        str(root / "base"),
        "--model",
        str(fts[1]),
        "--data",
        f"colours={folder}",
        "--finetuned",
        f"colours={fts[0]}",
        "--threads",
        "1",
        "--json",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    acc, ft = out["accuracy"]["colours"], out["finetuned_accuracy"]["colours"]
    assert out["normalized_accuracy"] == pytest.approx(acc / ft)
    assert main([*args[:-1], "--data", "broken"]) == 2
    assert "TASK=PATH" in capsys.readouterr().err
