"""The merge benchmark's in-memory floor (``benchmarks/kernel_floor.c``) computes the merge it
times: its output is the task-arithmetic sum of its inputs, step by step as the kernel documents
(``s = w_0 x_0``, then ``s = s + w_q x_q`` in float32, rounded once to the dtype), bit for bit,
across jobs, write blocks and threads."""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_merge.py"


@pytest.fixture(scope="module")
def floor_lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    spec = importlib.util.spec_from_file_location("bench_merge", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_merge", bench)  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    lib_path, reason = bench.build_floor(tmp_path_factory.mktemp("floor"))
    if lib_path is None:
        if "no C compiler" in reason:
            pytest.skip(reason)
        pytest.fail(f"benchmarks/kernel_floor.c does not build: {reason}")
    lib = ctypes.CDLL(str(lib_path))
    lib.rmt_floor_prepare.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int]
    lib.rmt_floor_array.restype = ctypes.c_void_p
    return lib


def _array(lib: ctypes.CDLL, q: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    address = lib.rmt_floor_array(q)
    assert address, f"no array {q}"
    raw = (ctypes.c_uint8 * (count * dtype.itemsize)).from_address(address)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)


@pytest.mark.parametrize(("dtype", "code"), [(torch.float32, 0), (torch.bfloat16, 2)])
@pytest.mark.parametrize("threads", [1, 2])
def test_floor_output_is_the_stepwise_task_arithmetic_sum(floor_lib, dtype, code, threads):
    n = 4
    count = (1 << 19) + (1 << 16) + 77  # several jobs and write blocks, a ragged tail
    assert floor_lib.rmt_floor_prepare(n, count, code) == 0
    assert floor_lib.rmt_floor_run(threads) == 0
    xs = [_array(floor_lib, q, count, dtype).float().numpy() for q in range(n)]
    weights = np.array([1 - 0.3 * (n - 1)] + [0.3] * (n - 1), dtype=np.float32)
    expected = xs[0] * weights[0]
    for x, w in zip(xs[1:], weights[1:], strict=True):
        expected = expected + x * w
    got = _array(floor_lib, n, count, dtype)
    assert float(np.abs(xs[1]).max()) > 0  # the inputs are not all zero
    assert torch.equal(got, torch.from_numpy(expected).to(dtype))


def test_floor_refuses_bad_arguments(floor_lib):
    assert floor_lib.rmt_floor_prepare(1, 10, 0) < 0  # one input: nothing to merge
    assert floor_lib.rmt_floor_prepare(3, 10, 1) < 0  # float64 is not a floor dtype
    assert floor_lib.rmt_floor_prepare(3, 10, 0) == 0
    assert floor_lib.rmt_floor_run(0) < 0
    assert floor_lib.rmt_floor_array(4) is None
