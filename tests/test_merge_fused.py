"""The fused linear-merge path for safetensors files: when merge_checkpoints takes it, its
blocked reads with one BLAS product per block and the compiled kernel's jobs (BLOCK,
KERNEL_CHUNK_BYTES and KERNEL monkeypatched small) against the per-tensor formula, the kernel's
job plan, files with different layouts, and Ctrl-C during a merge."""

from __future__ import annotations

import itertools
from contextlib import ExitStack

import pytest
import torch
from safetensors.torch import load_file, save_file

from merge_helpers import random_models as _models
from rmtllmf.fusion import MergeConfig, TaskVector, merge_checkpoints, merge_task_vectors


def _save_models(tmp_path, base, fts) -> list:
    """``base.safetensors`` and ``0.safetensors``, ``1.safetensors``, ... for the fine-tuned
    models, in ``tmp_path``; the fine-tuned paths."""
    save_file(base, tmp_path / "base.safetensors")
    paths = [tmp_path / f"{i}.safetensors" for i in range(len(fts))]
    for p, ft in zip(paths, fts, strict=True):
        save_file(ft, p)
    return paths


@pytest.mark.parametrize("use_kernel", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_linear_path_crosses_block_boundaries(tmp_path, monkeypatch, threads, use_kernel):
    """The bandwidth path (the compiled kernel, or blocked pread with one BLAS product per
    block) equals the per-tensor formula for every dtype, across job edges, in one thread or
    several."""
    import rmtllmf.fusion.fast.fused as fused_module
    from rmtllmf.fusion.fast import kernel
    from rmtllmf.fusion.safetensors_format import RawSafetensors

    if use_kernel and kernel.KERNEL is None:
        pytest.skip("the C kernel is not loaded (not built at install, or RMTLLMF_NO_KERNEL set)")
    monkeypatch.setattr(fused_module, "BLOCK", 37)
    monkeypatch.setattr(fused_module, "KERNEL_CHUNK_BYTES", 200)  # 50 float32 elements
    ran: list[kernel.Jobs] = []
    if kernel.KERNEL is not None:
        real = kernel.KERNEL.run
        monkeypatch.setattr(kernel.KERNEL, "run", lambda *a: ran.append(a[1]) or real(*a))
    base, fts = _models(3)
    g = torch.Generator().manual_seed(1)
    base["c.f64"] = torch.randn(50, generator=g).double()
    base["d.f16"] = torch.randn(90, generator=g).half()
    for ft in fts:
        ft["c.f64"] = base["c.f64"] + 0.05 * torch.randn(50, generator=g).double()
        ft["d.f16"] = (base["d.f16"].float() + 0.05 * torch.randn(90, generator=g)).half()
    paths = _save_models(tmp_path, base, fts)
    out = tmp_path / "m.safetensors"
    files = [tmp_path / "base.safetensors", *paths]
    selected = {k for k, v in base.items() if v.is_floating_point()} - {"a.bias"}
    with ExitStack() as stack:
        raws = [stack.enter_context(RawSafetensors(f)) for f in files]
        order = raws[0].keys()
        fused_module.fused_linear_merge(
            raws, out, order, selected, [0.45] * 3, {}, threads, use_kernel=use_kernel
        )
    if use_kernel:  # every merged dtype went through the kernel, in jobs of 200 bytes or less
        jobs = ran[0]
        assert all(j is jobs for j in ran)  # one job list, shared by the threads
        codes = {kernel.DTYPE_CODES[d] for d in ("float32", "float64", "float16")}
        assert set(jobs.dtypes.tolist()) == codes | {kernel.DTYPE_CODES["bfloat16"]}
        assert all(n <= 200 for n in _job_bytes(jobs))
        assert (jobs.dtypes == kernel.DTYPE_CODES["float32"]).sum() >= 3  # a.weight: 128
    else:
        assert ran == []
    got = load_file(out)
    assert set(got) == set(order)
    for k, v in base.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        if k not in selected:  # copied byte for byte
            assert torch.equal(got[k], v), k
            continue
        expected = v.double() + 0.45 * sum(ft[k].double() - v.double() for ft in fts)
        torch.testing.assert_close(got[k], expected.to(v.dtype))


def test_merge_checkpoints_takes_the_fused_path(tmp_path, monkeypatch):
    """A task-arithmetic merge of safetensors files runs the fused path and equals the
    in-memory merge."""
    import rmtllmf.fusion.drivers as merge_module

    calls = []
    real = merge_module.fused_linear_merge
    monkeypatch.setattr(
        merge_module, "fused_linear_merge", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    base, fts = _models(3)
    paths = _save_models(tmp_path, base, fts)
    out = tmp_path / "m.safetensors"
    cfg = MergeConfig(scaling=0.45)
    merge_checkpoints(tmp_path / "base.safetensors", paths, out, cfg)
    assert calls == [1]
    got = load_file(out)
    expected = merge_task_vectors(base, [TaskVector.from_models(base, ft) for ft in fts], cfg)
    for k in base:  # float32 exact to rounding; bf16 within one ulp (default tolerances)
        torch.testing.assert_close(got[k], expected[k])


def test_merge_without_positional_io_streams_instead(tmp_path, monkeypatch):
    """Where the OS has no ``preadv`` (Windows), linear merges take the streaming path."""
    import os

    import rmtllmf.fusion.drivers as merge_module

    monkeypatch.delattr(os, "preadv")
    monkeypatch.setattr(merge_module, "fused_linear_merge", None)  # would fail if called
    base, fts = _models(2)
    paths = _save_models(tmp_path, base, fts)
    cfg = MergeConfig(scaling=0.3)
    merge_checkpoints(tmp_path / "base.safetensors", paths, tmp_path / "m.safetensors", cfg)
    got = load_file(tmp_path / "m.safetensors")
    expected = merge_task_vectors(base, [TaskVector.from_models(base, ft) for ft in fts], cfg)
    for k in base:
        torch.testing.assert_close(got[k], expected[k])


def _job_bytes(jobs) -> list[int]:
    """Bytes per element of each kernel job's dtype, times its count."""
    from rmtllmf.fusion.fast import kernel

    size = {code: getattr(torch, d).itemsize for d, code in kernel.DTYPE_CODES.items()}
    return [int(c) * size[int(d)] for c, d in zip(jobs.counts, jobs.dtypes, strict=True)]


def _covered(jobs, q: int) -> list[tuple[int, int]]:
    """The byte ranges the jobs read from input ``q`` (``q = -1``: write to the output),
    sorted."""
    starts = jobs.out_starts if q < 0 else jobs.starts[:, q]
    return sorted((int(a), int(a) + n) for a, n in zip(starts, _job_bytes(jobs), strict=True))


def _merged_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Touching ranges joined."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        elif a < b:
            out.append((a, b))
    return out


def test_kernel_jobs_cover_every_tensor_once_in_windows_of_the_base_file(tmp_path, monkeypatch):
    """Kernel jobs read each selected tensor's bytes exactly once in every input and write them
    once in the output, hold at most KERNEL_CHUNK_BYTES, join tensors that lie back to back in
    every file (fewer jobs than tensors), and start, past a run's first job, at a multiple of
    KERNEL_CHUNK_BYTES in the base file, so that each job maps one huge page."""
    import rmtllmf.fusion.fast.fused as fused_module
    from rmtllmf.fusion.safetensors_format import RawSafetensors, safetensors_prefix

    chunk = 200
    monkeypatch.setattr(fused_module, "KERNEL_CHUNK_BYTES", chunk)
    g = torch.Generator().manual_seed(2)
    tensors = {
        "a": torch.randn(3, generator=g),  # shorter than one window
        "a2": torch.randn(5, generator=g),  # joins "a"
        "b": torch.randn(301, generator=g).double(),
        "c": torch.randn(777, generator=g).half(),
        "d": torch.randn(129, generator=g),
        "e": torch.empty(0),
        "ids": torch.arange(7),  # an integer buffer: copied, never a kernel job
    }
    save_file(tensors, tmp_path / "m.safetensors")
    with RawSafetensors(tmp_path / "m.safetensors") as raw:
        order = raw.keys()
        _, spans = safetensors_prefix([(k, *raw.entries[k][::-1]) for k in order], {"x": "y"})
        selected = set(order) - {"ids"}
        jobs, others = fused_module._plan([raw, raw], order, selected, spans, use_kernel=True)
        assert [j.key for j in others] == ["ids"]
        assert all(0 < n <= chunk for n in _job_bytes(jobs))
        for q, where in [(0, raw.spans), (1, raw.spans), (-1, spans)]:
            covered = _covered(jobs, q)
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(covered))  # no overlap
            assert _merged_spans(covered) == _merged_spans([where[k] for k in selected])
        cut = [int(s) % chunk == 0 for s in jobs.starts[:, 0]]
        # a job that starts off a multiple of the window begins a run: a dtype change here
        run_starts = [raw.spans[k][0] for k in ("a", "b", "c", "d")]
        assert all(c or int(s) in run_starts for c, s in zip(cut, jobs.starts[:, 0], strict=True))
        per_tensor = sum(
            1 + len(range(s // chunk + 1, -(-e // chunk)))  # a job per window a tensor touches
            for s, e in (raw.spans[k] for k in selected - {"e"})
        )
        assert len(jobs) < per_tensor


def test_fused_merge_of_files_with_different_layouts(tmp_path):
    """Fine-tuned files that store the tensors in another order (so their runs do not line up
    with the base's) merge to the per-tensor formula."""
    base, fts = _models(3)
    g = torch.Generator().manual_seed(5)
    for extra in ("c.weight", "d.weight"):
        base[extra] = torch.randn(40, 9, generator=g)
        for ft in fts:
            ft[extra] = base[extra] + 0.05 * torch.randn(40, 9, generator=g)
    save_file(base, tmp_path / "base.safetensors")
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for i, (p, ft) in enumerate(zip(paths, fts, strict=True)):
        keys = sorted(ft, reverse=i == 1)  # the second file in reverse order
        save_file({k: ft[k] for k in keys}, p, metadata={"pad": "x" * (13 * i)})
    out = tmp_path / "m.safetensors"
    merge_checkpoints(tmp_path / "base.safetensors", paths, out, MergeConfig(scaling=0.45))
    got = load_file(out)
    for k, v in base.items():
        if not v.is_floating_point():
            assert torch.equal(got[k], v)
            continue
        expected = v.double() + 0.45 * sum(ft[k].double() - v.double() for ft in fts)
        torch.testing.assert_close(got[k], expected.to(v.dtype))


def test_an_interrupted_merge_stops_its_threads_and_leaves_no_file(tmp_path, monkeypatch):
    """Ctrl-C during a fused merge sets the kernel's job counter to the end (the kernel's
    threads stop after the jobs under way), waits for them, and leaves neither the output nor
    a partial file behind."""
    import signal
    import threading
    import time

    from rmtllmf.fusion.fast import kernel

    running = threading.Event()

    class EndlessKernel:
        """A kernel call that runs until its counter is moved to the end."""

        stopped = False

        def run(self, fds, jobs, out_fd, weights, threads, stop):
            running.set()
            deadline = time.monotonic() + 20  # a test that fails, not one that hangs
            while stop.value < len(jobs) and time.monotonic() < deadline:
                time.sleep(0.005)
            EndlessKernel.stopped = stop.value >= len(jobs)

    monkeypatch.setattr(kernel, "KERNEL", EndlessKernel())
    # Ctrl-C as a terminal delivers it, whatever handler an earlier test's library left behind
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    base, fts = _models(2)
    paths = _save_models(tmp_path, base, fts)
    out = tmp_path / "m.safetensors"

    def interrupt() -> None:  # Ctrl-C, once the kernel runs (never after the merge ended)
        if running.wait(30):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            merge_checkpoints(tmp_path / "base.safetensors", paths, out, MergeConfig(scaling=0.3))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert running.is_set(), "the merge never reached the fused kernel"
    assert EndlessKernel.stopped
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["base.safetensors", *(p.name for p in paths)]
    )


@pytest.mark.parametrize("started", [True, False])
def test_an_interrupt_while_the_merge_thread_starts_still_stops_it(monkeypatch, started):
    """Ctrl-C can reach the main thread while it starts the merge's helper thread, after the
    thread has begun (``started``) or before: the merge is cancelled and waited for all the
    same, never left running on files that its caller then closes, and a thread that never
    began is not waited for."""
    import threading
    import time

    from rmtllmf.fusion.fast import fused

    cancelled = threading.Event()
    ran = threading.Event()
    stopped_by_cancel: list[bool] = []

    def work() -> None:
        ran.set()
        deadline = time.monotonic() + 20  # a test that fails, not one that hangs
        while not cancelled.is_set() and time.monotonic() < deadline:
            time.sleep(0.005)
        stopped_by_cancel.append(cancelled.is_set())

    start = threading.Thread.start

    def interrupted_start(self: threading.Thread) -> None:
        if started:
            start(self)
            ran.wait(10)  # the work is under way when the interrupt arrives
        raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    with pytest.raises(KeyboardInterrupt):
        fused._interruptible(work, cancelled.set)
    assert cancelled.is_set()
    assert stopped_by_cancel == ([True] if started else [])
