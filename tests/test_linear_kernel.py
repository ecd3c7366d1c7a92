"""The compiled linear-merge kernel against the sum it documents, step by step in numpy/torch.

The kernel computes ``s = w_0 x_0``, then ``s = s + w_q x_q`` in float32 (float64 for float64),
each step rounded, then rounds to the tensor's dtype to nearest even. numpy does exactly these
float32 steps, and numpy's float16 and torch's bfloat16 casts round to nearest even, so the
kernel must match them bit for bit.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rmtllmf.fusion.fast import kernel

pytestmark = pytest.mark.skipif(
    kernel.KERNEL is None,
    reason="the C kernel is not loaded (not built at install, or RMTLLMF_NO_KERNEL set)",
)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.uint8).numpy()


def _reference(xs: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """The documented steps: accumulate in float32 (float64 for float64), round once."""
    dtype = xs[0].dtype
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    w = np.asarray(weights, dtype=np.float64 if wide == torch.float64 else np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # inf, NaN and overflow are tested inputs
        s = xs[0].to(wide).numpy() * w[0]
        for x, wq in zip(xs[1:], w[1:], strict=True):
            s = s + x.to(wide).numpy() * wq
        if dtype == torch.float16:
            return torch.from_numpy(s.astype(np.float16))
    return torch.from_numpy(s).to(dtype)


def _run_kernel(
    tmp: Path, xs: list[torch.Tensor], weights: list[float], pads: list[int], out_pad: int
) -> torch.Tensor:
    """Write each input at byte ``pads[q]`` of its own file, merge into byte ``out_pad`` of an
    output file and read the result back."""
    assert kernel.KERNEL is not None
    dtype, count = xs[0].dtype, xs[0].numel()
    fds = []
    try:
        for q, (x, pad) in enumerate(zip(xs, pads, strict=True)):
            path = tmp / f"in{q}.bin"
            path.write_bytes(b"\x5a" * pad + _bits(x).tobytes() + b"\xa5" * 7)
            fds.append(os.open(path, os.O_RDONLY))
        out_path = tmp / "out.bin"
        out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            kernel.KERNEL.merge(fds, pads, out_fd, out_pad, count, weights, dtype)
        finally:
            os.close(out_fd)
    finally:
        for fd in fds:
            os.close(fd)
    data = out_path.read_bytes()
    assert len(data) == out_pad + count * dtype.itemsize  # nothing written outside the range
    return torch.frombuffer(bytearray(data[out_pad:]), dtype=torch.uint8).view(dtype)


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    n=st.integers(1, 6),
    count=st.integers(1, 300),
    seed=st.integers(0, 2**31 - 1),
    pads=st.lists(st.integers(0, 5000), min_size=6, max_size=6),
    out_pad=st.integers(0, 100),
)
def test_kernel_equals_the_stepwise_sum_bit_for_bit(
    tmp_path_factory, dtype, n, count, seed, pads, out_pad
):
    """Any dtype, input count, length (across the 64-element tile and its tail) and byte
    offsets (unaligned, inside and across pages): the kernel's bits are the reference's."""
    g = torch.Generator().manual_seed(seed)
    xs = [(torch.randn(count, generator=g, dtype=torch.float64) * 3).to(dtype) for _ in range(n)]
    weights = (torch.randn(n, generator=g, dtype=torch.float64)).tolist()
    pads = [p * dtype.itemsize for p in pads[:n]]
    got = _run_kernel(tmp_path_factory.mktemp("k"), xs, weights, pads, out_pad)
    np.testing.assert_array_equal(_bits(got), _bits(_reference(xs, weights)))


@pytest.mark.parametrize("out_pad", [0, 8, 4 * 65536 - 4 * 70, 4 * 65536 - 2])
def test_kernel_crosses_its_write_blocks(tmp_path, out_pad):
    """A length past the kernel's 65536-element write block, with a ragged end, written at
    output offsets inside a block, just before a block's end, and off the elements' alignment
    (no element boundary falls on a block boundary)."""
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(3 * 65536 + 77, generator=g) for _ in range(3)]
    weights = [-0.2, 0.7, 0.5]
    got = _run_kernel(tmp_path, xs, weights, [0, 12, 4096], out_pad)
    np.testing.assert_array_equal(_bits(got), _bits(_reference(xs, weights)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("weight", [1.0, 0.5, 3.0, 1 / 3, 1e-3, 7e3])
def test_half_conversions_over_every_bit_pattern(tmp_path, dtype, weight):
    """All 65536 values of a 16-bit dtype scaled by one weight: widening is exact (weight 1
    gives the input back), and rounding matches numpy/torch through subnormals, ties,
    overflow to infinity and NaN."""
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    got = _run_kernel(tmp_path, [x], [weight], [0], 0)
    expected = _reference([x], [weight])
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(got), nan)
    np.testing.assert_array_equal(_bits(got[~nan]), _bits(expected[~nan]))
    if weight == 1.0:
        np.testing.assert_array_equal(_bits(got[~nan]), _bits(x[~nan]))


def test_kernel_reports_system_errors_and_bad_arguments(tmp_path):
    assert kernel.KERNEL is not None
    path = tmp_path / "x.bin"
    path.write_bytes(bytes(64))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="Bad file descriptor"):  # output not open for writing
            kernel.KERNEL.merge([fd], [0], fd, 0, 16, [1.0], torch.float32)
        with pytest.raises(ValueError, match="2 weights"):
            kernel.KERNEL.merge([fd], [0], fd, 0, 16, [1.0, 2.0], torch.float32)
    finally:
        os.close(fd)
    with pytest.raises(OSError, match="Bad file descriptor"):  # a closed input
        kernel.KERNEL.merge([fd], [0], 1, 0, 16, [1.0], torch.float32)


def test_a_library_that_does_not_load_warns_and_leaves_the_numpy_path(tmp_path):
    from importlib.machinery import EXTENSION_SUFFIXES

    assert kernel.load(tmp_path) is None  # nothing built there
    (tmp_path / f"_linear_kernel{EXTENSION_SUFFIXES[0]}").write_bytes(b"not a shared library")
    with pytest.warns(RuntimeWarning, match="Reinstall rmtllmf"):
        assert kernel.load(tmp_path) is None


def test_threads_share_the_jobs_and_a_set_counter_stops_them(tmp_path):
    """Jobs run on 3 threads give the bits of the one-thread run, each job written once; a
    counter already at the job count runs nothing."""
    assert kernel.KERNEL is not None
    g = torch.Generator().manual_seed(4)
    count, n_jobs = 1000, 40
    xs = [torch.randn(count * n_jobs, generator=g) for _ in range(3)]
    weights = [0.4, -1.5, 0.25]
    fds = []
    for q, x in enumerate(xs):
        (tmp_path / f"in{q}.bin").write_bytes(_bits(x).tobytes())
        fds.append(os.open(tmp_path / f"in{q}.bin", os.O_RDONLY))
    size = 4 * count
    jobs = kernel.Jobs.of(
        3,
        [[j * size] * 3 for j in range(n_jobs)],
        [j * size for j in range(n_jobs)],
        [count] * n_jobs,
        [torch.float32] * n_jobs,
    )
    try:
        results = {}
        for threads, start in [(1, 0), (3, 0), (3, n_jobs)]:
            out = tmp_path / f"out{threads}_{start}.bin"
            out_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                stop = ctypes.c_int64(start)
                kernel.KERNEL.run(fds, jobs, out_fd, weights, threads=threads, stop=stop)
            finally:
                os.close(out_fd)
            results[threads, start] = out.read_bytes()
    finally:
        for fd in fds:
            os.close(fd)
    expected = _bits(_reference(xs, weights)).tobytes()
    assert results[1, 0] == expected
    assert results[3, 0] == expected
    assert results[3, n_jobs] == b""  # stopped before the first job


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("map_bytes", [0, 5 << 20, 1 << 30])
def test_windows_mapped_in_batches_give_the_sum_whatever_the_budget(tmp_path, threads, map_bytes):
    """Jobs of 1 to 700k elements (windows of up to 2.8 MiB, over several 2 MiB pages) at a
    different offset in every file, run with each thread's windows dropped before every job
    (``map_bytes=0``: the arena holds one job), every few jobs, or never: the bits of the sum."""
    assert kernel.KERNEL is not None
    g = torch.Generator().manual_seed(11)
    count = 1_600_000
    xs = [torch.randn(count, generator=g) for _ in range(3)]
    weights = [0.7, 0.2, -0.9]
    pads = [0, 4096 + 12, (2 << 20) - 8]
    fds = []
    for q, (x, pad) in enumerate(zip(xs, pads, strict=True)):
        (tmp_path / f"in{q}.bin").write_bytes(b"\x5a" * pad + _bits(x).tobytes())
        fds.append(os.open(tmp_path / f"in{q}.bin", os.O_RDONLY))
    # jobs of 1, 4999, 1 and 700k elements, then ones of 100k to 400k
    cuts = np.array([0, 1, 5000, 5001, 705_001, 900_000, 1_300_000, 1_400_000, count])
    starts = [[pad + 4 * int(a) for pad in pads] for a in cuts[:-1]]
    jobs = kernel.Jobs.of(
        3,
        starts,
        [4 * int(a) for a in cuts[:-1]],
        np.diff(cuts).tolist(),
        [torch.float32] * (len(cuts) - 1),
    )
    assert int(jobs.counts.max()) * 4 > 2 << 20  # a window over more than one 2 MiB page
    out = tmp_path / "out.bin"
    out_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        kernel.KERNEL.run(fds, jobs, out_fd, weights, threads=threads, map_bytes=map_bytes)
    finally:
        os.close(out_fd)
        for fd in fds:
            os.close(fd)
    assert out.read_bytes() == _bits(_reference(xs, weights)).tobytes()


def test_a_negative_map_budget_or_offset_is_refused(tmp_path):
    assert kernel.KERNEL is not None
    path = tmp_path / "x.bin"
    path.write_bytes(bytes(64))
    fd = os.open(path, os.O_RDWR)
    jobs = kernel.Jobs.of(1, [[0]], [0], [16], [torch.float32])
    try:
        with pytest.raises(ValueError, match="map_bytes=-1"):
            kernel.KERNEL.run([fd], jobs, fd, [1.0], map_bytes=-1)
        negative = kernel.Jobs.of(1, [[-4096]], [0], [16], [torch.float32])
        with pytest.raises(OSError, match="Invalid argument"):  # not an arena sized to fit it
            kernel.KERNEL.run([fd], negative, fd, [1.0])
    finally:
        os.close(fd)
