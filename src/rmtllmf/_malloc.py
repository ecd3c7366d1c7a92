"""Keep freed memory for reuse instead of handing it back to the kernel (glibc malloc).

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
and returns it with ``munmap`` when freed. A study allocates tensors of that size over and over:
a flat task vector of MiniLM is 90 MB, its word-embedding table 47 MB. Each new mapping is
zero-filled page by page on first touch (one minor page fault per 4 KiB), so the same memory
is faulted in again for every tensor. :func:`keep_freed_memory` turns ``mmap`` allocations off
(``M_MMAP_MAX = 0``) and raises the heap's trim threshold, so freed blocks stay in the heap and
the next tensor reuses them. It changes where tensors live, not what is computed.

The price is memory: a process keeps its peak heap until it exits, and a large block that fits
no free hole extends the heap. The study's commands (``rmtllmf reproduce``, ``rmtllmf zoo``)
apply it; the streaming ``rmtllmf merge`` does not, so its slices go back to the system.
Processes started afterwards inherit the setting through glibc's environment variables
(``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``), read when they start. Where a heap cannot
grow (a thread's arena, a failed ``brk``) glibc still maps the block, so nothing fails.

``RMTLLMF_SYSTEM_MALLOC=1`` keeps the system's behaviour, and so does any malloc setting of the
user's own (other ``MALLOC_*`` values, ``glibc.malloc`` tunables).
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


def _users_own() -> bool:
    """Whether the user opted out or set malloc options of their own."""
    if os.environ.get(OPT_OUT, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return True
    return any(k in os.environ and os.environ[k] != v for k, v in MALLOC_ENV.items())


def keep_freed_memory() -> bool:
    """Apply the settings (module docs) to this process and export them to its children.

    Returns whether both were applied: ``False`` off Linux, without glibc's ``mallopt``, or
    when the user opted out or set malloc options (theirs are kept). Where the first
    ``mallopt`` succeeds and the second fails, the trim threshold stays raised (harmless) and
    nothing is exported."""
    if _users_own() or not sys.platform.startswith("linux"):
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
    """The ``MALLOC_*`` variables of this environment (these settings or the user's own), for
    workers that do not inherit it (a Ray cluster's)."""
    return {k: os.environ[k] for k in MALLOC_ENV if k in os.environ}


__all__ = ["MALLOC_ENV", "keep_freed_memory", "malloc_env"]
