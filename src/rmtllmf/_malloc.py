"""Keep freed memory for reuse instead of handing it back to the kernel (glibc malloc).

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
and returns it with ``munmap`` when freed. A study allocates tensors of that size over and over:
a flat task vector of MiniLM is 90 MB, its word-embedding table 47 MB. Each new mapping is
zero-filled page by page on first touch (one minor page fault per 4 KiB), so the same memory
is faulted in again for every tensor. :func:`keep_freed_memory` turns ``mmap`` allocations off
(``M_MMAP_MAX = 0``) and raises the heap's trim threshold, so freed blocks stay in the heap and
the next tensor reuses them. It changes where tensors live, never what is computed: results
are identical. ``docs/scaling.md`` has the measured effect.

Processes started afterwards inherit the setting through glibc's environment variables
(``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``), read when they start. Set
``RMTLLMF_SYSTEM_MALLOC=1`` to keep the system's behaviour; variables the user set are kept.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1
"""Free bytes at the top of the heap before glibc trims it (mallopt takes an ``int``)."""
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}
"""The same settings for processes started later (glibc reads them at start-up)."""
OPT_OUT = "RMTLLMF_SYSTEM_MALLOC"


def keep_freed_memory() -> bool:
    """Apply the settings (module docs) to this process and export them to its children.

    Returns whether they were applied: ``False`` off Linux, without glibc's ``mallopt``, when
    ``RMTLLMF_SYSTEM_MALLOC`` is set, or when the user set either variable (theirs are kept)."""
    if os.environ.get(OPT_OUT) or any(k in os.environ for k in MALLOC_ENV):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1 or mallopt(M_MMAP_MAX, 0) != 1:
        return False
    os.environ.update(MALLOC_ENV)
    return True


def malloc_env() -> dict[str, str]:
    """The settings this process exports (empty when not applied), for workers that do not
    inherit its environment (a Ray cluster's)."""
    return {k: os.environ[k] for k in MALLOC_ENV if k in os.environ}


__all__ = ["MALLOC_ENV", "keep_freed_memory", "malloc_env"]
