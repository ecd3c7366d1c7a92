"""rmtllmf._malloc: freed memory is reused (no fresh page faults), and the opt-outs hold."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from rmtllmf import _malloc

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Allocate with glibc's malloc (as torch does), touch and free 64 MiB (above glibc's largest mmap
# threshold, 32 MiB), then count the minor page faults of doing it again: each fresh mapping
# faults in all 16,384 pages.
PROBE = """
import ctypes, json, os, resource
from rmtllmf._malloc import keep_freed_memory
kept = keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def touch():
    block = libc.malloc(64 * 2**20)
    ctypes.memset(block, 1, 64 * 2**20)
    libc.free(block)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"kept": kept, "faults": faults, "env": os.environ.get("MALLOC_MMAP_MAX_")}))
"""


def _probe(**env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if k not in (*_malloc.MALLOC_ENV, _malloc.OPT_OUT)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults() -> None:
    kept = _probe()
    system = _probe(RMTLLMF_SYSTEM_MALLOC="1")
    assert kept["kept"] is True and kept["env"] == "0"
    assert system["kept"] is False and system["env"] is None
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert isinstance(system["faults"], int) and system["faults"] >= pages // 2
    assert isinstance(kept["faults"], int) and kept["faults"] < pages // 20


def test_opt_out_and_user_settings_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in _malloc.MALLOC_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(_malloc.OPT_OUT, "1")
    assert _malloc.keep_freed_memory() is False
    assert _malloc.malloc_env() == {}
    monkeypatch.delenv(_malloc.OPT_OUT)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert _malloc.keep_freed_memory() is False
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "131072"
    assert _malloc.malloc_env() == {"MALLOC_TRIM_THRESHOLD_": "131072"}
