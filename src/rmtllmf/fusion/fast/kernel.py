"""The compiled linear-merge kernel (``_linear_kernel.c``), loaded with ctypes.

A job computes ``theta = sum_q w_q theta_q`` (eq. 6 written as a weighted sum, with
``w_0 = 1 - sum_{q>=1} w_q`` for the base) over ``count`` elements of one dtype: the inputs' byte
ranges are memory-mapped and read in place, the sum is formed in registers and written with
``pwrite``. One call runs a list of jobs on threads it starts, which take them in turn from a
shared counter. Per element it computes ``s = w_0 x_0``, then ``s = s + w_q x_q`` for
``q = 1..n-1`` in float32 (float64 for float64 tensors), each product and sum rounded, then rounds
``s`` to the tensor's dtype (nearest even). The kernel is built at install time where a C compiler
exists (``setup.py``); :data:`KERNEL` is ``None`` where it was not, and merges then take the numpy
path. ctypes releases the GIL for the call.
"""

from __future__ import annotations

import ctypes
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from rmtllmf.fusion.safetensors_format import DtypeLike, dtype_name

DTYPE_CODES = {"float32": 0, "float64": 1, "bfloat16": 2, "float16": 3}
"""The dtypes the kernel merges, by name (all inputs and the output in the same dtype)."""

MAX_INPUTS = 256
"""Inputs per call (base included), as compiled in (``RMT_MAX_INPUTS``)."""

MAP_BYTES = 64 << 20
"""Bytes of input windows each thread keeps mapped before it unmaps them all in one call (at
least one job's). Each unmap of pages a thread has read makes the system flush the other threads'
TLBs by inter-processor interrupts, which leave a virtual machine's guest, so unmapping once per
arena rather than once per window saves most of them; mapped pages count in the resident set
(the trade measured: docs/merge-kernel.md, "What the kernel does")."""


@dataclass(frozen=True)
class Jobs:
    """Kernel jobs: job ``j`` merges ``counts[j]`` elements of dtype ``dtypes[j]`` whose bytes
    start at ``starts[j, q]`` in input ``q`` and go to ``out_starts[j]`` in the output."""

    starts: NDArray[np.int64]  # (jobs, inputs)
    out_starts: NDArray[np.int64]  # (jobs,)
    counts: NDArray[np.int64]  # (jobs,)
    dtypes: NDArray[np.int32]  # (jobs,): DTYPE_CODES

    @classmethod
    def of(
        cls,
        inputs: int,
        starts: Sequence[Sequence[int]],
        out_starts: Sequence[int],
        counts: Sequence[int],
        dtypes: Sequence[DtypeLike],
    ) -> Jobs:
        """Jobs over ``inputs`` files from per-job lists (``starts[j]`` holds one byte offset
        per input)."""
        n = len(counts)
        if not len(starts) == len(out_starts) == len(dtypes) == n:
            raise ValueError(
                f"{len(starts)} starts, {len(out_starts)} output starts, {n} counts and "
                f"{len(dtypes)} dtypes: give one of each per job"
            )
        return cls(
            np.asarray(starts, dtype=np.int64).reshape(n, inputs),
            np.asarray(out_starts, dtype=np.int64),
            np.asarray(counts, dtype=np.int64),
            np.asarray([DTYPE_CODES[dtype_name(d)] for d in dtypes], dtype=np.int32),
        )

    def __len__(self) -> int:
        return len(self.counts)


def _pointer(a: NDArray[Any], ctype: type[Any]) -> Any:
    return a.ctypes.data_as(ctypes.POINTER(ctype))


class LinearKernel:
    """The loaded library: :meth:`run` runs a job list, :meth:`merge` one range."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lib = ctypes.CDLL(str(path))
        self._run = lib.rmt_linear_merge_jobs
        self._run.restype = ctypes.c_int
        i64 = ctypes.POINTER(ctypes.c_int64)
        self._run.argtypes = [
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_int64,
            i64,
            i64,
            i64,
            ctypes.POINTER(ctypes.c_int32),
            ctypes.POINTER(ctypes.c_double),
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int64,
            i64,
        ]

    def run(
        self,
        fds: Sequence[int],
        jobs: Jobs,
        out_fd: int,
        weights: Sequence[float],
        threads: int = 1,
        stop: ctypes.c_int64 | None = None,
        map_bytes: int = MAP_BYTES,
    ) -> None:
        """Run ``jobs`` (inputs ``fds``, output ``out_fd``) on ``threads`` threads, this one
        and ``threads - 1`` that the call starts, each taking the next job as it finishes one
        and keeping up to ``map_bytes`` of input windows mapped (:data:`MAP_BYTES`).
        ``stop``, if given, is the threads' shared job counter, holding 0 or the first job to
        run: setting its value to ``len(jobs)`` from another thread (before or during the call)
        stops the call after the jobs under way. Raises ``OSError`` with the system's reason
        when a map or write fails."""
        n = len(fds)
        if len(weights) != n or not 1 <= n <= MAX_INPUTS or jobs.starts.shape != (len(jobs), n):
            raise ValueError(
                f"{n} inputs, {len(weights)} weights and starts of shape {jobs.starts.shape}: "
                f"give one weight and one start per job for each of 1..{MAX_INPUTS} inputs"
            )
        if threads < 1:
            raise ValueError(f"threads={threads}: give at least 1")
        if map_bytes < 0:
            raise ValueError(f"map_bytes={map_bytes}: give 0 (one job's windows) or more")
        arrays = (
            np.ascontiguousarray(jobs.starts, dtype=np.int64),
            np.ascontiguousarray(jobs.out_starts, dtype=np.int64),
            np.ascontiguousarray(jobs.counts, dtype=np.int64),
            np.ascontiguousarray(jobs.dtypes, dtype=np.int32),
        )
        counter = ctypes.c_int64(0) if stop is None else stop
        rc = self._run(
            n,
            (ctypes.c_int * n)(*fds),
            len(jobs),
            _pointer(arrays[0], ctypes.c_int64),
            _pointer(arrays[1], ctypes.c_int64),
            _pointer(arrays[2], ctypes.c_int64),
            _pointer(arrays[3], ctypes.c_int32),
            (ctypes.c_double * n)(*weights),
            out_fd,
            threads,
            map_bytes,
            ctypes.byref(counter),
        )
        if rc != 0:
            raise OSError(-rc, os.strerror(-rc))

    def merge(
        self,
        fds: Sequence[int],
        starts: Sequence[int],
        out_fd: int,
        out_start: int,
        count: int,
        weights: Sequence[float],
        dtype: DtypeLike,
    ) -> None:
        """Write ``sum_q weights[q] x_q`` for ``count`` elements of ``dtype`` to byte
        ``out_start`` of ``out_fd``, where input ``q``'s elements start at byte ``starts[q]`` of
        ``fds[q]`` (one job of :meth:`run`)."""
        if len(starts) != len(fds):
            raise ValueError(f"{len(fds)} inputs and {len(starts)} starts")
        self.run(fds, Jobs.of(len(fds), [starts], [out_start], [count], [dtype]), out_fd, weights)


def load(folder: Path) -> LinearKernel | None:
    """The kernel built into ``folder``, or ``None`` (with a warning if a library is there but
    does not load, e.g. one built for another machine: merges then take the numpy path)."""
    for suffix in EXTENSION_SUFFIXES:
        path = folder / f"_linear_kernel{suffix}"
        if path.exists():
            try:
                return LinearKernel(path)
            except (OSError, AttributeError) as exc:
                warnings.warn(
                    f"cannot load the merge kernel {path} ({exc}); merges take the slower numpy "
                    "path. Reinstall rmtllmf on this machine to rebuild it.",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return None


KERNEL: LinearKernel | None = (
    None if os.environ.get("RMTLLMF_NO_KERNEL") else load(Path(__file__).parent)
)
"""The kernel, or ``None`` where it was not built or ``RMTLLMF_NO_KERNEL`` is set."""
