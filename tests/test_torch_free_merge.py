"""The linear merge between safetensors files runs without torch: its dtype conversions and its
non-finite check equal torch's bit for bit, and a whole ``rmtllmf merge`` process never loads
torch (nor the channel's scipy)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from hf_tiny import finetune_copies, reference_merge, save_bert
from rmtllmf.fusion.fast.fused import narrow, widen
from rmtllmf.fusion.safetensors_format import BY_NAME, RawSafetensors, count_nonfinite_stored

SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-45, 3.4e38, -3.4e38, 1.0 + 2**-8]
"""Signed zeros, infinities, NaN, subnormals, the largest floats, and a bfloat16 tie."""


def _floats(n: int) -> st.SearchStrategy[np.ndarray]:
    return st.lists(
        st.floats(width=32, allow_nan=True, allow_infinity=True)
        | st.integers(0, 2**32 - 1).map(lambda b: float(np.uint32(b).view(np.float32))),
        min_size=1,
        max_size=n,
    ).map(lambda xs: np.array(xs + SPECIAL, dtype=np.float32))


@settings(max_examples=200, deadline=None)
@given(_floats(64))
def test_narrowing_to_bfloat16_and_float16_rounds_as_torch(values):
    for name in ("bfloat16", "float16"):
        out = np.empty(values.size * 2, dtype=np.uint8)
        narrow(values, BY_NAME[name], out)
        theirs = torch.from_numpy(values).to(getattr(torch, name)).view(torch.int16).numpy()
        ours = out.view(np.int16)
        nan = np.isnan(values)
        assert np.array_equal(ours[~nan], theirs[~nan]), name
        # a NaN stays a NaN (torch keeps its payload's sign and bits, rmtllmf writes the quiet one)
        back = torch.from_numpy(ours.copy()).view(getattr(torch, name)).float().numpy()
        assert np.isnan(back[nan]).all()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**16 - 1), min_size=1, max_size=64))
def test_widening_bfloat16_and_float16_is_exact_as_torch(bits):
    raw = np.array(bits, dtype=np.uint16).view(np.uint8)
    for name in ("bfloat16", "float16"):
        ours = np.empty(len(bits), dtype=np.float32)
        widen(raw, BY_NAME[name], ours)
        theirs = torch.from_numpy(raw.view(np.int16).copy()).view(getattr(torch, name)).float()
        assert np.array_equal(ours, theirs.numpy(), equal_nan=True), name


@pytest.mark.parametrize("name", ["float32", "float64", "float16", "bfloat16", "int64"])
def test_the_stored_non_finite_count_equals_torchs(tmp_path, monkeypatch, name):
    import rmtllmf.fusion.safetensors_format as fmt

    monkeypatch.setattr(fmt, "NONFINITE_CHUNK", 7)  # many chunks, a short last one
    dtype = getattr(torch, name)
    g = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        t = torch.randn(5, 9, generator=g).to(dtype)
        t.view(-1)[torch.tensor([0, 6, 7, 30, 44])] = torch.tensor(
            [float("nan"), float("inf"), -float("inf"), float("nan"), 1.0], dtype=dtype
        )
        expected = int((~torch.isfinite(t)).sum())
    else:
        t, expected = torch.arange(45, dtype=dtype).reshape(5, 9), 0
    save_file({"t": t, "empty": torch.empty(0, dtype=dtype)}, tmp_path / "x.safetensors")
    with RawSafetensors(tmp_path / "x.safetensors") as raw:
        found = count_nonfinite_stored(raw, ["empty", "t"])
    assert found == ({"t": expected} if expected else {})


def test_a_whole_merge_process_loads_neither_torch_nor_scipy(tmp_path):
    base = save_bert(tmp_path / "base")
    fts = finetune_copies(base, tmp_path, 3)
    out = tmp_path / "merged.safetensors"
    code = (
        "import sys; from rmtllmf.cli import main; "
        "status = main(sys.argv[1:]); "
        "print('loaded:', sorted(m for m in ('torch._C', 'scipy', 'transformers') "
        "if m in sys.modules)); sys.exit(status)"
    )
    argv = ["merge", "--base", str(base), "--models", *map(str, fts), "--lambda", "0.4",
            "--out", str(out)]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout
    from safetensors.torch import load_file

    merged, expected = load_file(out), reference_merge(base, fts, 0.4)
    assert merged.keys() == expected.keys()
    for k, v in expected.items():
        torch.testing.assert_close(merged[k], v)
