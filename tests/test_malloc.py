"""rmtllmf._malloc: freed memory is reused (no fresh page faults), children inherit it, and
the opt-outs hold."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from typing import Any

import pytest

from rmtllmf import _malloc
from rmtllmf.study.executors import RayExecutor

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Allocate with glibc's malloc (as torch does), touch and free 64 MiB (above glibc's largest mmap
# threshold, 32 MiB), then count the minor page faults of doing it again: each fresh mapping
# faults in all 16,384 pages (transparent huge pages are turned off for the probe, so the count
# does not depend on the host's setting).
PROBE = """
import ctypes, json, os, resource
from rmtllmf._malloc import keep_freed_memory
libc = ctypes.CDLL(None)
libc.prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE
kept = keep_freed_memory()
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
PAGES = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 16384


def _probe(**env: str) -> dict[str, Any]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in (*_malloc.MALLOC_ENV, _malloc.OPT_OUT, "GLIBC_TUNABLES")
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults() -> None:
    kept = _probe()
    system = _probe(RMTLLMF_SYSTEM_MALLOC="1")
    assert kept["kept"] is True and kept["env"] == "0"
    assert system["kept"] is False and system["env"] is None
    assert system["faults"] >= PAGES // 2
    assert kept["faults"] < PAGES // 20


@pytest.mark.skipif(not GLIBC, reason="glibc reads MALLOC_* at start-up")
def test_a_child_started_with_the_exported_settings_keeps_freed_memory() -> None:
    child = _probe(RMTLLMF_SYSTEM_MALLOC="1", **_malloc.MALLOC_ENV)
    assert child["kept"] is False  # opted out in the child: only the inherited settings act
    assert child["faults"] < PAGES // 20


@pytest.mark.parametrize(
    "env",
    [
        {_malloc.OPT_OUT: "1"},
        {_malloc.OPT_OUT: "true"},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"MALLOC_MMAP_MAX_": "65536"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"},
    ],
)
def test_opt_out_and_user_settings_are_kept(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for key in (*_malloc.MALLOC_ENV, _malloc.OPT_OUT, "GLIBC_TUNABLES"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _malloc.keep_freed_memory() is False
    assert {k: os.environ.get(k) for k in env} == env
    assert _malloc.malloc_env() == {k: v for k, v in env.items() if k in _malloc.MALLOC_ENV}


def test_opt_out_zero_does_not_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_malloc.OPT_OUT, "0")
    for key in (*_malloc.MALLOC_ENV, "GLIBC_TUNABLES"):
        monkeypatch.delenv(key, raising=False)
    assert _malloc._users_own() is False


def test_ray_workers_get_the_malloc_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _malloc.MALLOC_ENV.items():
        monkeypatch.setenv(key, value)
    calls: list[dict[str, Any]] = []

    class FakeRay:
        def is_initialized(self) -> bool:
            return False

        def init(self, **kwargs: Any) -> None:
            calls.append(kwargs)

    RayExecutor(factory=lambda: None, workers=2, cpus_per_run=1.0)._start(FakeRay())  # type: ignore[arg-type, return-value]
    assert calls[0]["runtime_env"]["env_vars"] == {"OMP_NUM_THREADS": "1", **_malloc.MALLOC_ENV}
