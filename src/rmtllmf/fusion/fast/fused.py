"""The bandwidth-bound path of linear merges (task arithmetic, averaging) between files.

A linear merge is ``theta = w_0 theta_base + sum_q w_q theta_q`` per entry, with
``w_0 = 1 - sum_q w_q`` (task arithmetic, eq. 6: ``w_q = lambda_N``). Its cost is memory traffic:
every input byte is read once and every output byte written once, so the floor on a machine is
``(bytes read + bytes written) / copy bandwidth``.

The work is cut into jobs:

* kernel jobs (the compiled :mod:`rmtllmf.fusion.fast.kernel`, for float32 / float64 / bfloat16 /
  float16 tensors whose inputs share the base's dtype): tensors that lie back to back in every
  file are joined into runs, cut at :data:`KERNEL_CHUNK_BYTES` multiples of the base file; the
  kernel memory-maps each job's window of every input, reads it in place, sums in registers and
  writes with ``pwrite``. One call runs them all on threads it starts, without the GIL;
* numpy jobs (no kernel built, or mixed dtypes): :data:`BLOCK` elements of each input are read
  (``pread``) into one row of a per-thread buffer that stays in cache; the block of the result is
  one BLAS product of the coefficient row with those rows, in (at least) float32, written with
  ``pwrite``; worker threads take them in turn;
* copy jobs: tensors outside the merge (unselected parameters, integer buffers) are copied from
  the base byte for byte.

The work runs in a helper thread while the calling thread waits, so that Ctrl-C stops it after
the jobs under way; an interrupted or failed merge leaves no partial file, and a file that was
at the output path before as it was.

A file truncated by another process while it is mapped ends the process (``SIGBUS``); the sizes
are checked when the files are opened.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from rmtllmf._io import atomic_output
from rmtllmf.errors import CheckpointError
from rmtllmf.fusion.fast import kernel
from rmtllmf.fusion.safetensors_format import Dtype, RawSafetensors, safetensors_prefix

BLOCK = 1 << 16
"""Elements of one tensor per block: 256 KB of float32 per input, few enough system calls, and
nine inputs' blocks fit the shared cache (the block sizes compared: docs/merge-kernel.md)."""

KERNEL_CHUNK_BYTES = 1 << 21
"""Bytes of each input per kernel job (2 MiB). Jobs are cut where the base file crosses a
multiple of it, so a window is one huge page of the page cache where the kernel keeps the file
in 2 MiB folios, which saves page faults (docs/merge-kernel.md)."""

_MAX_ITEMSIZE = 8
_Array = NDArray[np.floating]


@dataclass(frozen=True)
class _Job:
    key: str
    first: int  # first element of the job
    count: int  # elements in the job
    kind: Literal["numpy", "copy"]


@dataclass
class _Run:
    """Bytes ``starts[q]``.. of every input and ``out``.. of the output, ``size`` long: one tensor
    or several that lie back to back, in the same order, in every file."""

    dtype: Dtype
    starts: list[int]
    out: int
    size: int

    def extend(self, starts: Sequence[int], out: int, size: int, dtype: Dtype) -> bool:
        """Take in the next tensor if it continues this run in every file."""
        if dtype != self.dtype or out != self.out + self.size:
            return False
        if any(s != mine + self.size for s, mine in zip(starts, self.starts, strict=True)):
            return False
        self.size += size
        return True


def _kernel_eligible(raws: Sequence[RawSafetensors], key: str) -> bool:
    dtype = raws[0].entries[key][0]
    return dtype.name in kernel.DTYPE_CODES and all(r.entries[key][0] == dtype for r in raws)


def _plan(
    raws: Sequence[RawSafetensors],
    order: Sequence[str],
    selected: set[str],
    out_spans: dict[str, tuple[int, int]],
    use_kernel: bool,
) -> tuple[kernel.Jobs, list[_Job]]:
    """The kernel's jobs and the others (numpy and copy jobs, per tensor).

    Selected tensors that the kernel merges are joined into runs where they lie back to back in
    every input and in the output (files written by one program usually share their layout), and
    runs are cut where the base file crosses a multiple of :data:`KERNEL_CHUNK_BYTES`: a job is
    then one huge page of the base file, and a run of small tensors (biases, norms) is one job
    instead of one per tensor."""
    runs: list[_Run] = []
    jobs: list[_Job] = []
    # files with the same header bytes share one parse (the usual case): their offsets are the
    # base's, and only the base's need be followed
    views = raws[:1] if all(r.spans is raws[0].spans for r in raws) else raws
    use_kernel = use_kernel and len(raws) <= kernel.MAX_INPUTS
    for key in order:
        dtype, shape = raws[0].entries[key]
        n = math.prod(shape)
        if key in selected and use_kernel and _kernel_eligible(views, key):
            at = [r.spans[key][0] for r in views]
            size = n * dtype.itemsize
            if size and not (runs and runs[-1].extend(at, out_spans[key][0], size, dtype)):
                runs.append(_Run(dtype, at, out_spans[key][0], size))
            continue
        kind: Literal["numpy", "copy"] = "numpy" if key in selected else "copy"
        cuts = [0, *range(BLOCK, n, BLOCK), n] if n else []
        jobs.extend(_Job(key, a, b - a, kind) for a, b in itertools.pairwise(cuts))
    starts: list[list[int]] = []
    outs: list[int] = []
    counts: list[int] = []
    dtypes: list[Dtype] = []
    for run in runs:
        item = run.dtype.itemsize
        # cut where the base file crosses a multiple of KERNEL_CHUNK_BYTES (2 MiB, the size of
        # a huge page), so that each window is one huge page of the page cache
        step, count = KERNEL_CHUNK_BYTES // item, run.size // item
        first = (-run.starts[0]) % KERNEL_CHUNK_BYTES // item
        for a, b in itertools.pairwise([0, *range(first or step, count, step), count]):
            starts.append([s + a * item for s in run.starts] * (len(raws) // len(views)))
            outs.append(run.out + a * item)
            counts.append(b - a)
            dtypes.append(run.dtype)
    return kernel.Jobs.of(len(raws), starts, outs, counts, dtypes), jobs


class _Worker:
    """One thread's buffers: a ``(inputs, BLOCK)`` stack, a conversion scratch, the accumulator
    and the output, with their byte views made once (slicing them per block is cheap)."""

    def __init__(self, n_inputs: int, coefficients: Sequence[float]) -> None:
        width = BLOCK * _MAX_ITEMSIZE
        self.stack = np.empty((n_inputs, width), dtype=np.uint8)
        self.rows = [row.data for row in self.stack]
        self.scratch = np.empty(width, dtype=np.uint8)
        self.acc = np.empty((1, width), dtype=np.uint8)
        self.out = np.empty(width, dtype=np.uint8)
        self.coefficients = coefficients
        self.typed: dict[type[np.floating], tuple[_Array, _Array, _Array]] = {}

    def views(self, acc_type: type[np.floating]) -> tuple[_Array, _Array, _Array]:
        """The stack and the accumulator as ``acc_type`` arrays (float32 or float64), and the
        coefficients row."""
        if acc_type not in self.typed:
            acc = self.acc.view(acc_type)
            w = np.asarray([self.coefficients], dtype=acc_type)
            self.typed[acc_type] = (self.stack.view(acc_type), acc, w)
        return self.typed[acc_type]


def widen(raw: NDArray[np.uint8], dtype: Dtype, out: _Array) -> None:
    """Write the values whose bytes (``dtype``) are ``raw`` into ``out`` (float32 or float64);
    bfloat16 is the upper half of a float32, so widening it is exact."""
    if dtype.name == "bfloat16":
        out[...] = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        out[...] = raw.view(np.dtype(dtype.name))


def narrow(values: _Array, dtype: Dtype, out: NDArray[np.uint8]) -> None:
    """Write ``values`` rounded to ``dtype`` as bytes into ``out``, rounding to nearest, ties to
    even, as torch does (a NaN becomes bfloat16's quiet NaN ``0x7FC0``, as in torch; a value
    beyond the type's range becomes an infinity, which the merge's finiteness check reports)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype.name == "bfloat16":
            bits = values.astype(np.float32).view(np.uint32)
            rounded = (bits + (((bits >> 16) & 1) + np.uint32(0x7FFF))) >> 16
            out.view(np.uint16)[...] = np.where(np.isnan(values), 0x7FC0, rounded)
        else:
            out.view(np.dtype(dtype.name))[...] = values


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done


def _allocate(fd: int, size: int) -> None:
    """Give the output file its final size; allocating its blocks up front makes the
    concurrent block writes cheaper (plain truncation where the filesystem cannot)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        os.ftruncate(fd, size)


POLL_SECONDS = 0.05
"""How often the waiting thread wakes to act on a pending Ctrl-C. A wait without a timeout can
miss a signal that arrives just before it blocks (the handler runs, the wait does not end) and
would then act on it only when the merge is over."""


def _interruptible(work: Callable[[], None], cancel: Callable[[], None]) -> None:
    """Run ``work`` in a helper thread while this thread waits for it, so that Ctrl-C (which
    Python delivers to the main thread) stops a long merge: on an interrupt, or any exception
    while starting or waiting, ``cancel`` asks ``work`` to stop after the jobs under way, that is
    waited for (further interrupts meanwhile are ignored: the caller closes the files ``work``
    writes to once this returns), and the exception goes on. ``work`` must do nothing once
    ``cancel`` has run, also if it only starts after it. An exception raised by ``work`` is
    raised here."""
    failures: list[BaseException] = []
    finished = threading.Event()  # waited on, not Thread.join: an interrupted join in Python
    # 3.11 can mark a running thread as stopped

    def target() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the waiting thread
            failures.append(exc)
        finally:
            finished.set()

    thread = threading.Thread(target=target, name="rmtllmf-merge", daemon=True)
    try:
        thread.start()  # inside the try: an interrupt can arrive while the thread starts
        while not finished.wait(POLL_SECONDS):
            pass
    except BaseException:
        cancel()
        # not alive: never started, or started and done
        while thread.is_alive() and not finished.is_set():
            try:
                finished.wait(POLL_SECONDS)
            except KeyboardInterrupt:
                continue
        raise
    if failures:
        raise failures[0]


def fused_linear_merge(
    raws: Sequence[RawSafetensors],
    out: Path,
    order: Sequence[str],
    selected: set[str],
    weights: Sequence[float],
    metadata: dict[str, str],
    threads: int = 1,
    use_kernel: bool = True,
) -> None:
    """Write ``out`` (safetensors, the base's keys, shapes, dtypes and order) with
    ``w_0 base + sum_q w_q model_q`` for the ``selected`` keys and the base's bytes elsewhere.

    ``raws[0]`` is the base and ``raws[1:]`` the fine-tuned models (open safetensors files, whose
    keys and shapes the caller has checked and which it closes); ``weights`` are ``w_1..w_N``. Sums
    run in ``promote(dtype, float32)`` and are rounded once to the base's dtype: in the compiled
    kernel (where built, and unless ``use_kernel`` is false) in the order ``w_0 x_0 + w_1 x_1 +
    ...``, otherwise as one ``(1, N+1) @ (N+1, BLOCK)`` BLAS product per block. ``threads`` workers
    take the next job as they finish one; BLAS runs single-threaded inside them.
    """
    if len(weights) != len(raws) - 1:
        raise ValueError(f"{len(weights)} weights for {len(raws) - 1} fine-tuned models")
    coefficients = [1.0 - float(sum(weights)), *map(float, weights)]
    compiled = kernel.KERNEL if use_kernel else None
    try:
        base = raws[0]
        layout = [(k, base.entries[k][1], base.entries[k][0]) for k in order]
        prefix, spans = safetensors_prefix(layout, metadata)
        kernel_jobs, jobs = _plan(raws, order, selected, spans, compiled is not None)
        with atomic_output(out) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _pwrite_all(fd, memoryview(prefix), 0)
                _allocate(fd, max((stop for _, stop in spans.values()), default=len(prefix)))
                blocks = _BlockMerger(raws, spans, coefficients, fd)
                kernel_run = None
                if compiled is not None and len(kernel_jobs):
                    fds = [r.fileno() for r in raws]

                    def kernel_run(counter: ctypes.c_int64) -> None:
                        assert compiled is not None
                        compiled.run(fds, kernel_jobs, fd, coefficients, threads, counter)

                _run_jobs(blocks, jobs, kernel_run, len(kernel_jobs), threads)
            finally:
                os.close(fd)
    except OSError as exc:
        raise CheckpointError(f"cannot write the merged model to {out}: {exc}") from exc


class _BlockMerger:
    """Runs numpy and copy jobs into the output ``fd``; each worker thread has its buffers."""

    def __init__(
        self,
        raws: Sequence[RawSafetensors],
        spans: dict[str, tuple[int, int]],
        coefficients: Sequence[float],
        fd: int,
    ) -> None:
        self.raws, self.spans, self.coefficients, self.fd = raws, spans, coefficients, fd
        self.local = threading.local()

    def run(self, job: _Job) -> None:
        """Merge (or copy) one block: read each input's bytes, one BLAS product, write."""
        base, fd = self.raws[0], self.fd
        dtype = base.entries[job.key][0]
        dst = self.spans[job.key][0] + job.first * dtype.itemsize
        size = job.count * dtype.itemsize
        worker: _Worker | None = getattr(self.local, "worker", None)
        if worker is None:
            worker = self.local.worker = _Worker(len(self.raws), self.coefficients)
        if job.kind == "copy":
            base.read_into(job.key, job.first * dtype.itemsize, worker.rows[0][:size])
            _pwrite_all(fd, worker.rows[0][:size], dst)
            return
        acc_type = np.float64 if dtype.name == "float64" else np.float32
        stack, acc, w = worker.views(acc_type)
        width = job.count * np.dtype(acc_type).itemsize
        for i, f in enumerate(self.raws):
            in_dtype = f.entries[job.key][0]
            start = job.first * in_dtype.itemsize
            if in_dtype.name == np.dtype(acc_type).name:
                f.read_into(job.key, start, worker.rows[i][:width])
            else:
                n_bytes = job.count * in_dtype.itemsize
                f.read_into(job.key, start, worker.scratch[:n_bytes].data)
                widen(worker.scratch[:n_bytes], in_dtype, stack[i, : job.count])
        result = acc[:, : job.count]
        np.matmul(w, stack[:, : job.count], out=result)
        if dtype.name == np.dtype(acc_type).name:
            _pwrite_all(fd, worker.acc[0, :width].data, dst)
        else:
            narrow(result[0], dtype, worker.out[:size])
            _pwrite_all(fd, worker.out[:size].data, dst)


def _run_jobs(
    blocks: _BlockMerger,
    jobs: Sequence[_Job],
    kernel_run: Callable[[ctypes.c_int64], None] | None,
    n_kernel_jobs: int,
    threads: int,
) -> None:
    """The kernel's jobs (``kernel_run``, given the kernel's shared job counter), then the numpy
    and copy jobs on ``threads`` workers that take them in turn; interruptible (Ctrl-C cancels
    both after the jobs under way)."""
    pending = iter(jobs)
    lock = threading.Lock()
    cancelled = threading.Event()
    next_kernel_job = ctypes.c_int64(0)  # the kernel's job counter, shared with cancel

    def run_share(_: int) -> None:
        while not cancelled.is_set():
            with lock:
                job = next(pending, None)
            if job is None:
                return
            blocks.run(job)

    def work() -> None:
        if kernel_run is not None:
            kernel_run(next_kernel_job)
        if not jobs:
            return
        numpy_jobs = any(j.kind == "numpy" for j in jobs)
        with threadpool_limits(1) if numpy_jobs else nullcontext():  # BLAS on 1 thread
            if threads <= 1:
                run_share(0)
            else:
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(run_share, range(threads)))

    def cancel() -> None:
        cancelled.set()
        next_kernel_job.value = n_kernel_jobs

    _interruptible(work, cancel)
