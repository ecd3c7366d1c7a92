"""The compiled linear-merge kernel (``_linear_kernel.c``), loaded with ctypes.

One call computes ``theta = sum_q w_q theta_q`` (eq. 6 written as a weighted sum, with
``w_0 = 1 - sum_{q>=1} w_q`` for the base) over ``count`` elements of one tensor: the inputs'
byte ranges are memory-mapped and read in place, the sum is formed in registers and written with
``pwrite``. Per element it computes ``s = w_0 x_0``, then ``s = s + w_q x_q`` for ``q = 1..n-1``
in float32 (float64 for float64 tensors), each product and sum rounded, then rounds ``s`` to the
tensor's dtype (nearest even). The kernel is built at install time where a C compiler exists
(``setup.py``); :data:`KERNEL` is ``None`` where it was not, and merges then take the numpy path.
ctypes releases the GIL for the call, so Python threads run calls in parallel.
"""

from __future__ import annotations

import ctypes
import os
import warnings
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import torch

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
"""The dtypes the kernel merges (all inputs and the output in the same dtype)."""

MAX_INPUTS = 256
"""Inputs per call (base included), as compiled in (``RMT_MAX_INPUTS``)."""


class LinearKernel:
    """The loaded library; :meth:`merge` is one kernel call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lib = ctypes.CDLL(str(path))
        self._merge = lib.rmt_linear_merge
        self._merge.restype = ctypes.c_int
        self._merge.argtypes = [
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_int),
            ctypes.POINTER(ctypes.c_int64),
            ctypes.c_int,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.POINTER(ctypes.c_double),
            ctypes.c_int,
        ]

    def merge(
        self,
        fds: Sequence[int],
        starts: Sequence[int],
        out_fd: int,
        out_start: int,
        count: int,
        weights: Sequence[float],
        dtype: torch.dtype,
    ) -> None:
        """Write ``sum_q weights[q] x_q`` for ``count`` elements of ``dtype`` to byte
        ``out_start`` of ``out_fd``, where input ``q``'s elements start at byte ``starts[q]`` of
        ``fds[q]``. Raises ``OSError`` with the system's reason when a map or write fails."""
        n = len(fds)
        if not (len(starts) == len(weights) == n) or not 1 <= n <= MAX_INPUTS:
            raise ValueError(f"{n} inputs, {len(starts)} starts, {len(weights)} weights")
        rc = self._merge(
            n,
            (ctypes.c_int * n)(*fds),
            (ctypes.c_int64 * n)(*starts),
            out_fd,
            out_start,
            count,
            (ctypes.c_double * n)(*weights),
            DTYPE_CODES[dtype],
        )
        if rc != 0:
            raise OSError(-rc, os.strerror(-rc))


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
