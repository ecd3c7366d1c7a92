"""merge_checkpoints on the streaming path: checkpoints read tensor by tensor (safetensors
files or state dicts) and merged in slices give the same tensors, dtypes included, as the merge
in memory; DARE's draws and TIES's sign election do not depend on where the slices fall."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from merge_helpers import random_models as _models
from rmtllmf.fusion import MergeConfig, TaskVector, merge_checkpoints, merge_task_vectors


@pytest.mark.parametrize(
    "cfg",
    [
        MergeConfig(scaling=0.3),
        MergeConfig(method="ties", scaling=0.5, options={"density": 0.2}),
        MergeConfig(method="dare", options={"combine": "ties", "density": 0.5, "drop_rate": 0.3}),
        MergeConfig(method="average"),
    ],
)
def test_streaming_merge_from_disk_equals_in_memory(tmp_path, cfg):
    base, fts = _models(3)
    save_file(base, tmp_path / "base.safetensors")
    paths = []
    for i, ft in enumerate(fts):
        paths.append(tmp_path / f"ft{i}.safetensors")
        save_file(ft, paths[-1])
    out = tmp_path / "merged.safetensors"
    merge_checkpoints(tmp_path / "base.safetensors", paths, out, cfg)
    got = load_file(out)
    tvs = [TaskVector.from_models(base, ft) for ft in fts]
    expected = merge_task_vectors(base, tvs, cfg)
    assert set(got) == set(base)  # safetensors stores keys sorted
    for k in base:
        assert got[k].dtype == base[k].dtype
        torch.testing.assert_close(got[k], expected[k])


@pytest.mark.parametrize(
    "cfg",
    [
        MergeConfig(scaling=0.3),
        MergeConfig(method="average"),
        MergeConfig(method="ties", scaling=0.5, options={"density": 0.2}),
        MergeConfig(method="ties", options={"density": 1.0, "merge": "sum"}),
        MergeConfig(method="ties", options={"density": 0.5, "merge": "max"}),
        MergeConfig(method="dare", options={"drop_rate": 0.3, "seed": 5}),
        MergeConfig(method="dare", options={"combine": "ties", "density": 0.5, "drop_rate": 0.3}),
    ],
)
def test_sliceable_merges_stream_slices_bit_for_bit(tmp_path, monkeypatch, cfg):
    """Slices of 7 entries (dividing no tensor) through the streaming path give the same bits as
    the whole tensors merged in memory, float32 and bfloat16 alike."""
    import rmtllmf.fusion.drivers as merge_module

    monkeypatch.setattr(merge_module, "SLICE_ELEMENTS", 7)
    base, fts = _models(3)
    out = tmp_path / "merged.safetensors"
    merge_checkpoints(base, fts, out, cfg)  # state dicts: the streaming path, not the fused one
    expected = merge_task_vectors(base, [TaskVector.from_models(base, ft) for ft in fts], cfg)
    got = load_file(out)
    for k in base:
        assert got[k].dtype == expected[k].dtype
        assert torch.equal(got[k], expected[k]), k


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 3 * 4096), st.lists(st.integers(0, 3 * 4096), max_size=5), st.integers(0, 9))
def test_dare_uniforms_depend_on_position_only(n, cuts, seed):
    """Entries offset .. offset+n-1 drawn in any cut are the same draws as drawn whole."""
    from rmtllmf.fusion.methods import _dare_uniforms

    whole = _dare_uniforms(n, 0, seed)
    bounds = [0, *sorted(c for c in cuts if c <= n), n]
    parts = [_dare_uniforms(b - a, a, seed) for a, b in itertools.pairwise(bounds)]
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(_dare_uniforms(4096, 0, seed), _dare_uniforms(4096, 4096, seed))


def test_sliced_ties_breaks_exact_ties_by_the_whole_tensors_majority(tmp_path, monkeypatch):
    """Entry 0's task vectors cancel (+1, -1, 0), so TIES gives it the majority sign of the
    whole tensor: 13 positive entries against 6 negative, though its own slice (entries 0-6)
    is all negative. With the majority +1 the disjoint mean keeps +1 alone."""
    import rmtllmf.fusion.drivers as merge_module

    monkeypatch.setattr(merge_module, "SLICE_ELEMENTS", 7)
    rows = torch.full((19, 3), 0.5)
    rows[:6] = -0.5
    taus = torch.cat([torch.tensor([[1.0, -1.0, 0.0]]), rows])  # (20 entries, 3 models)
    base = {"w": torch.zeros(20)}
    fts = [{"w": taus[:, q].clone()} for q in range(3)]
    cfg = MergeConfig(method="ties", scaling=1.0, options={"density": 1.0})
    merge_checkpoints(base, fts, tmp_path / "m.safetensors", cfg)
    got = load_file(tmp_path / "m.safetensors")["w"]
    assert got[0] == 1.0
    torch.testing.assert_close(got[1:], taus[1:, 0], rtol=0, atol=0)  # all three agree: mean
