"""NaN and infinities in input checkpoints are refused by default, with the file and the key
named, on every merge path (the fused linear path, the streaming path, sharded HF directories,
the loaders other commands use); ``--allow-nonfinite`` lets them through; a refused merge
writes nothing. A merge that overflows from finite inputs is refused too."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from merge_helpers import random_models
from rmtllmf.cli import main
from rmtllmf.errors import CheckpointError
from rmtllmf.fusion import (
    LazyCheckpoint,
    MergeConfig,
    TaskVector,
    load_state_dict,
    merge_checkpoints,
)


def _save(tmp_path, base, fts):
    save_file(base, tmp_path / "base.safetensors")
    paths = []
    for i, ft in enumerate(fts):
        paths.append(tmp_path / f"ft{i}.safetensors")
        save_file(ft, paths[-1])
    return tmp_path / "base.safetensors", paths


@pytest.mark.parametrize(
    ("method", "value", "key"),
    [
        (["--method", "task-arithmetic"], float("nan"), "a.weight"),  # fused linear path
        (["--method", "average"], float("inf"), "b.weight"),  # bfloat16 tensor
        (["--method", "ties", "--density", "0.5"], float("nan"), "a.bias"),  # streaming path
        (["--method", "dare", "--drop-rate", "0.9"], float("-inf"), "a.weight"),
    ],
)
def test_a_nan_in_a_fine_tuned_model_stops_the_merge(tmp_path, capsys, method, value, key):
    base, fts = random_models(3)
    fts[1][key].view(-1)[5] = value
    base_file, paths = _save(tmp_path, base, fts)
    out = tmp_path / "merged.safetensors"
    args = ["merge", "--base", str(base_file), "--models", *map(str, paths), *method]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(paths[1]) in err and repr(key) in err and "--allow-nonfinite" in err
    assert ("NaN" if value != value else "inf") in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["base.safetensors", "ft0.safetensors", "ft1.safetensors", "ft2.safetensors"]
    )
    assert main([*args, "--out", str(out), "--allow-nonfinite"]) == 0
    merged = load_file(out)
    assert not torch.isfinite(merged[key].float()).all()


def test_a_nan_in_the_base_is_named_too(tmp_path, capsys):
    base, fts = random_models(2)
    base["a.bias"][3] = float("nan")
    base_file, paths = _save(tmp_path, base, fts)
    out = tmp_path / "merged.safetensors"
    args = ["merge", "--base", str(base_file), "--models", *map(str, paths), "--out", str(out)]
    assert main([*args, "--exclude", "a.bias"]) == 2  # copied, not merged: still refused
    err = capsys.readouterr().err
    assert "base.safetensors" in err and "'a.bias'" in err
    assert not out.exists()


def test_a_nan_in_a_sharded_directory_names_the_shard(tmp_path, capsys):
    from rmtllmf.fusion.hf_dir import save_hf_directory

    base, fts = random_models(2)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text('{"model_type": "none"}')
    dirs = []
    for i, state in enumerate([base, *fts]):
        if i == 2:
            state["b.weight"][1, 2] = float("nan")
        save_hf_directory(state, tmp_path / f"m{i}", tmp_path / "cfg", max_shard_size="600B")
        dirs.append(tmp_path / f"m{i}")
    out = tmp_path / "merged"
    args = ["merge", "--base", str(dirs[0]), "--models", *map(str, dirs[1:]), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    shard = next(f.name for f in dirs[2].glob("model-*.safetensors") if "b.weight" in load_file(f))
    assert shard in err and "'b.weight'" in err
    assert not out.exists()


def test_an_overflowing_merge_is_refused_and_float32_output_fixes_it(tmp_path, capsys):
    base = {"w": torch.full((4,), 60000.0, dtype=torch.float16)}
    fts = [{"w": torch.full((4,), 65000.0, dtype=torch.float16)} for _ in range(2)]
    fts[0]["w"][0] = 60000.0
    base_file, paths = _save(tmp_path, base, fts)
    out = tmp_path / "merged.safetensors"
    args = ["merge", "--base", str(base_file), "--models", *map(str, paths), "--out", str(out)]
    assert main([*args, "--method", "average"]) == 0  # stays in range
    assert main([*args, "--weights", "40", "40", "--lambda", "1"]) == 2
    err = capsys.readouterr().err
    assert "overflows" in err and "'w'" in err and "--dtype float32" in err
    assert main([*args, "--weights", "40", "40", "--lambda", "1", "--dtype", "float32"]) == 0
    assert torch.isfinite(load_file(out)["w"]).all()


def test_the_loaders_refuse_nonfinite_values(tmp_path):
    base, fts = random_models(1)
    fts[0]["a.weight"][0, 0] = float("inf")
    base_file, (ft,) = _save(tmp_path, base, fts)
    with pytest.raises(CheckpointError, match=r"ft0\.safetensors: tensor 'a\.weight' holds inf"):
        load_state_dict(ft)
    assert not torch.isfinite(load_state_dict(ft, allow_nonfinite=True)["a.weight"]).all()
    with pytest.raises(CheckpointError, match=r"a\.weight"):
        TaskVector.from_models(base_file, ft)
    tv = TaskVector.from_models(base_file, ft, allow_nonfinite=True)
    assert torch.isinf(tv.tensors["a.weight"][0, 0])
    with LazyCheckpoint(ft) as ckpt:
        ckpt.get("a.bias")  # the finite tensors of the file are served
        with pytest.raises(CheckpointError):
            ckpt.get("a.weight")
    with pytest.raises(CheckpointError, match=r"a\.weight"):
        merge_checkpoints(base_file, [ft], tmp_path / "m.safetensors", MergeConfig())
    assert not (tmp_path / "m.safetensors").exists()
