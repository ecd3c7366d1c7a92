"""``rmtllmf reproduce --check``: present, missing and corrupt assets, offline, nothing written,
and the plan's size counted independently of the preflight."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from rmtllmf.app.reproduce import quick_config, sweep_config
from rmtllmf.cli import main
from rmtllmf.pools.zoo_config import load_base
from rmtllmf.study.experiment import reception_key
from rmtllmf.study.plan import plan_runs


def _check(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["reproduce", "--check", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_the_quick_study_passes_and_its_plan_is_counted(tmp_path, capsys):
    status, out, _ = _check(["--quick", "--out", str(tmp_path / "out")], capsys)
    assert status == 0
    assert not (tmp_path / "out").exists()  # a check writes nothing
    sweep = sweep_config(quick_config())
    runs = plan_runs(sweep, dict.fromkeys(sweep.task_counts, 0.5))
    uses = {reception_key(r.config) for r in runs}
    entries = sum(v.numel() for v in load_base().state_dict().values() if v.is_floating_point())
    assert f"plan: {len(runs)} run(s) in {len(uses)} channel use(s), {entries:,} entries" in out
    assert "shipped experts: 9 files, sha256 as recorded" in out


@pytest.mark.parametrize("broken", ["missing", "corrupt"])
def test_a_missing_or_corrupt_tiny_base_is_named(tmp_path, capsys, broken):
    base = tmp_path / "base.safetensors"
    if broken == "corrupt":
        base.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"zoo": {"base": str(base)}}))
    status, out, err = _check(["--config", str(config), "--out", str(tmp_path / "o")], capsys)
    assert status == 2
    assert f"MISSING  base {base}" in out
    assert err.startswith(f"rmtllmf: error: base {base}: ") and len(err.splitlines()) == 1
    assert "scripts/pretrain_tiny_base.py" in err


@pytest.fixture
def clip_study(tiny_clip, tmp_path):
    """An hf-clip study on the tiny CLIP: two tasks, each with a dataset saved to disk."""
    datasets = pytest.importorskip("datasets", reason="hf-clip data needs datasets")
    from PIL import Image

    clip_root, fts, _ = tiny_clip
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["red", "blue"])}
    )
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)) for _ in range(4)]
    split = {"image": images, "label": [0, 1, 0, 1]}
    tasks = {}
    for i, ft in enumerate(fts):
        data = tmp_path / f"data{i}"
        whole = datasets.Dataset.from_dict(split, features=features)
        datasets.DatasetDict({"train": whole, "test": whole}).save_to_disk(str(data))
        tasks[f"t{i}"] = {"finetuned": str(ft), "dataset": str(data)}
    study = {
        "family": "hf-clip",
        "clip": {"base": str(clip_root / "base"), "tasks": tasks},
        "sweep": {"task_counts": [2], "links": ["snr"], "scenarios": ["ideal"]},
    }
    config = tmp_path / "clip.yaml"
    config.write_text(yaml.safe_dump(study))
    return config, study, fts


def test_a_complete_clip_study_passes(clip_study, tmp_path, capsys):
    config, _, fts = clip_study
    status, out, _ = _check(["--config", str(config), "--out", str(tmp_path / "o")], capsys)
    assert status == 0, out
    assert out.count("  found    ") == 5  # base, two fine-tunes, two datasets
    assert "task t0's dataset" in out and "train and test load" in out
    vision = sum(
        v.numel()
        for k, v in load_vision(fts[0]).items()  # the fine-tune's vision tower, read with torch
        if v.is_floating_point()
    )
    assert f"({vision:,} vision entries)" in out


def load_vision(path: Path) -> dict:
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(path)
    return {f"vision_model.{k}": v for k, v in model.vision_model.state_dict().items()}


def test_missing_and_corrupt_clip_assets_are_each_named_with_a_fix(clip_study, tmp_path, capsys):
    config, study, fts = clip_study
    ft1 = tmp_path / "ft1.safetensors"
    ft1.write_bytes(Path(fts[1]).read_bytes()[:100])  # truncated
    shutil.rmtree(study["clip"]["tasks"]["t0"]["dataset"])
    study["clip"]["tasks"]["t0"]["finetuned"] = str(tmp_path / "gone")
    study["clip"]["tasks"]["t1"]["finetuned"] = str(ft1)
    config.write_text(yaml.safe_dump(study))
    status, out, err = _check(["--config", str(config), "--out", str(tmp_path / "o")], capsys)
    assert status == 2
    missing = [line for line in out.splitlines() if line.startswith("  MISSING")]
    assert len(missing) == 3
    assert f"task t0's fine-tune {tmp_path / 'gone'}" in missing[0]
    assert "give the path of an existing checkpoint" in missing[0]
    assert "task t0's dataset" in missing[1]
    assert f"task t1's fine-tune {ft1}" in missing[2] and "re-save or re-download" in missing[2]
    assert "(2 more listed above)" in err and len(err.splitlines()) == 1


def test_a_text_model_missing_from_the_cache_gets_its_fetch_command(tmp_path, capsys):
    config = tmp_path / "text.yaml"
    config.write_text(yaml.safe_dump({"family": "hf-text", "text": {"base": "nobody/no-model"}}))
    status, _, err = _check(["--config", str(config), "--out", str(tmp_path / "o")], capsys)
    assert status == 2
    assert "fetch it with: huggingface-cli download nobody/no-model" in err
