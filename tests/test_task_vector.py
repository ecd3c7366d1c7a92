"""Task vectors (eq. 1): construction, strictness, arithmetic, flat view, files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rmtllmf.errors import CheckpointError, InputError
from rmtllmf.fusion import ParamFilter, TaskVector, cosine_matrix, load_state_dict


def _model(seed: int, *, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embeddings.patch.weight": torch.randn(8, 3, 2, 2, generator=g).to(dtype),
        "embeddings.position_ids": torch.arange(5).unsqueeze(0),
        "blocks.0.attn.weight": torch.randn(8, 8, generator=g).to(dtype),
        "blocks.0.attn.bias": torch.randn(8, generator=g).to(dtype),
        "head.weight": torch.randn(4, 8, generator=g).to(dtype),
    }


def _finetune(base, seed, scale=0.01):
    g = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
        for k, v in base.items()
    }


def test_task_vector_is_the_difference_over_float_params():
    base = _model(0)
    ft = _finetune(base, 1)
    tv = TaskVector.from_models(base, ft)
    assert "embeddings.position_ids" not in tv.tensors  # integer buffers never enter
    for k, v in tv.tensors.items():
        torch.testing.assert_close(v, ft[k] - base[k])
    restored = tv.apply(base)
    for k in base:
        torch.testing.assert_close(restored[k], ft[k])


def test_parameter_filter_selects_by_pattern():
    base = _model(0)
    tv = TaskVector.from_models(
        base,
        _finetune(base, 1),
        param_filter=ParamFilter(include=("blocks.*",), exclude=("*.bias",)),
    )
    assert list(tv.tensors) == ["blocks.0.attn.weight"]


def test_mismatched_models_name_the_offending_keys():
    base = _model(0)
    ft = _finetune(base, 1)
    del ft["head.weight"]
    ft["extra.weight"] = torch.zeros(2)
    with pytest.raises(
        InputError, match=r"missing from the fine-tuned.*'head.weight'.*'extra.weight'"
    ):
        TaskVector.from_models(base, ft)
    ft = _finetune(base, 1)
    ft["head.weight"] = torch.zeros(5, 8)
    with pytest.raises(InputError, match=r"head\.weight"):
        TaskVector.from_models(base, ft)
    with pytest.raises(InputError, match="dtype"):
        TaskVector.from_models(base, _model(1, dtype=torch.float16))


def test_arithmetic_and_cosine_match_numpy():
    base = _model(0)
    a = TaskVector.from_models(base, _finetune(base, 1))
    b = TaskVector.from_models(base, _finetune(base, 2))
    fa, fb = a.flatten().astype(np.float64), b.flatten().astype(np.float64)
    np.testing.assert_allclose((a + b).flatten(), fa + fb, rtol=1e-6)
    np.testing.assert_allclose((a - 2.0 * b).flatten(), fa - 2 * fb, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose((-a).flatten(), -fa)
    assert a.norm() == pytest.approx(np.linalg.norm(fa), rel=1e-6)
    cos = fa @ fb / np.linalg.norm(fa) / np.linalg.norm(fb)
    assert a.cosine(b) == pytest.approx(cos, rel=1e-6)
    m = cosine_matrix([a, b, a])
    np.testing.assert_allclose(np.diag(m), 1.0)
    np.testing.assert_allclose(m, m.T)
    assert m[0, 1] == pytest.approx(cos, rel=1e-6)
    assert m[0, 2] == pytest.approx(1.0)


def test_cosine_matrix_is_the_pairwise_dot_products_to_the_last_bit(monkeypatch):
    base = _model(0)
    vecs = [TaskVector.from_models(base, _finetune(base, s, scale=0.1 * s)) for s in (1, 2, 3, 4)]
    gram = np.array([[a.dot(b) for b in vecs] for a in vecs])
    norms = np.sqrt(np.diag(gram))
    np.testing.assert_array_equal(cosine_matrix(vecs), gram / np.outer(norms, norms))
    monkeypatch.setattr("rmtllmf.fusion.task_vector.WIDE_BYTES", 0)  # pair by pair
    np.testing.assert_array_equal(cosine_matrix(vecs), gram / np.outer(norms, norms))
    zero = TaskVector({k: torch.zeros_like(v) for k, v in vecs[0].tensors.items()})
    m = cosine_matrix([vecs[0], zero])
    assert m[1, 1] == 0.0 and m[0, 1] == 0.0 and m[0, 0] == pytest.approx(1.0)
    assert cosine_matrix([]).shape == (0, 0)
    with pytest.raises(InputError):
        cosine_matrix([vecs[0], TaskVector({"other": torch.ones(3)})])


def test_flatten_roundtrip_and_segments():
    base = _model(0)
    tv = TaskVector.from_models(base, _finetune(base, 1))
    flat = tv.flatten()
    layout = tv.layout
    assert flat.size == layout.total == layout.segments[-1]
    np.testing.assert_array_equal(
        np.diff(layout.segments), [v.numel() for v in tv.tensors.values()]
    )
    back = TaskVector.from_flat(flat, layout)
    for k in tv.tensors:
        torch.testing.assert_close(back.tensors[k], tv.tensors[k])
    with pytest.raises(InputError, match="layout needs"):
        TaskVector.from_flat(flat[:-1], layout)


def test_files_safetensors_hf_dirs_and_shards(tmp_path):
    base, ft = _model(0), _finetune(_model(0), 1)
    save_file(base, tmp_path / "base.safetensors")
    (tmp_path / "ft").mkdir()
    save_file(ft, tmp_path / "ft" / "model.safetensors")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    keys = list(ft)
    save_file({k: ft[k] for k in keys[:2]}, sharded / "model-00001-of-00002.safetensors")
    save_file({k: ft[k] for k in keys[2:]}, sharded / "model-00002-of-00002.safetensors")
    weight_map = {
        k: f"model-0000{1 if i < 2 else 2}-of-00002.safetensors" for i, k in enumerate(keys)
    }
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    expected = TaskVector.from_models(base, ft)
    for source in (tmp_path / "ft", tmp_path / "ft" / "model.safetensors", sharded):
        tv = TaskVector.from_models(tmp_path / "base.safetensors", source)
        for k in expected.tensors:
            torch.testing.assert_close(tv.tensors[k], expected.tensors[k])
    expected.save(tmp_path / "tv.safetensors")
    loaded = TaskVector.load(tmp_path / "tv.safetensors")
    assert set(loaded.tensors) == set(expected.tensors)


def test_pickles_are_refused_unless_allowed(tmp_path):
    base = _model(0)
    torch.save(base, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        load_state_dict(tmp_path)
    loaded = load_state_dict(tmp_path, allow_pickle=True)  # weights_only=True inside
    torch.testing.assert_close(loaded["head.weight"], base["head.weight"])


def test_truncated_and_missing_files_are_clear_errors(tmp_path):
    save_file(_model(0), tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut.safetensors.*truncated"):
        load_state_dict(tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no weights found"):
        load_state_dict(tmp_path / "empty")


def test_raw_headers_are_parsed_once_and_every_file_is_checked(tmp_path):
    """Files with the same header bytes share one parse, yet each file's size is checked
    against it: a truncated copy of a good file, and a header whose byte spans disagree with
    its shapes, are clear errors through the merge's reader (RawSafetensors)."""
    from rmtllmf.fusion.safetensors_format import BY_NAME, RawSafetensors

    save_file(_model(0), tmp_path / "a.safetensors")
    save_file(_model(1), tmp_path / "b.safetensors")  # same names, shapes and dtypes
    data = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-4])
    a, b = RawSafetensors(tmp_path / "a.safetensors"), RawSafetensors(tmp_path / "b.safetensors")
    with a, b:
        assert a.spans is b.spans and a.entries is b.entries
        shape = tuple(_model(0)["head.weight"].shape)
        assert a.meta("head.weight") == (shape, BY_NAME["float32"])  # no torch in the header
    with pytest.raises(CheckpointError, match=r"cut.safetensors is truncated"):
        RawSafetensors(tmp_path / "cut.safetensors")
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [*header[key]["shape"], 2]  # twice the bytes its span holds
    raw = json.dumps(header).encode()
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    with pytest.raises(CheckpointError, match=r"bad.safetensors.*takes \d+ bytes"):
        RawSafetensors(tmp_path / "bad.safetensors")
