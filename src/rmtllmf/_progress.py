"""Progress reporting for long work (a rich bar on a terminal, log lines elsewhere) and the
notices a long command prints before it starts."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

from rich.progress import Progress

Advance = Callable[..., None]
"""``advance(description, steps=1)``: ``steps`` more of the total are done."""


@contextmanager
def progress_bar(enabled: bool, description: str, total: int) -> Iterator[Advance]:
    """A rich progress bar on a terminal; plain log lines every 5% otherwise (CI, files).

    Yields ``advance(description, steps=1)`` (safe to call from several threads); does nothing
    when ``enabled`` is false.
    """
    if not enabled:
        yield lambda _desc, steps=1: None
        return
    lock = threading.Lock()
    if sys.stderr.isatty():
        with Progress() as bar:
            task = bar.add_task(description, total=total)

            def update(desc: str, steps: int = 1) -> None:
                with lock:
                    bar.update(task, advance=steps, description=desc)

            yield update
        return
    start, done = time.perf_counter(), 0
    every = max(1, total // 20)

    def advance(desc: str, steps: int = 1) -> None:
        nonlocal done
        with lock:
            before, done = done, done + steps
            if done // every == before // every and done != total:
                return
            rate = done / max(time.perf_counter() - start, 1e-9)
            eta = (total - done) / rate
            print(
                f"{desc}: {done}/{total} ({rate:.1f}/s, ETA {eta:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    yield advance


def notice(text: str, stream: IO[str] | None = None) -> None:
    """A line on stderr (stdout stays machine-readable for ``--json``) before long work."""
    print(f"rmtllmf: {text}", file=stream or sys.stderr, flush=True)


def minutes(seconds: float) -> str:
    """A duration as people say it: ``40 s``, ``3 min``, ``2.5 h``."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
