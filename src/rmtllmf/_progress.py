"""Progress reporting for long work: a rich bar on a terminal, log lines elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import Progress


@contextmanager
def progress_bar(enabled: bool, description: str, total: int) -> Iterator[Callable[[str], None]]:
    """A rich progress bar on a terminal; plain log lines every 5% otherwise (CI, files).

    Yields ``advance(description)``; does nothing when ``enabled`` is false.
    """
    if not enabled:
        yield lambda _desc: None
        return
    if sys.stderr.isatty():
        with Progress() as bar:
            task = bar.add_task(description, total=total)
            yield lambda desc: bar.update(task, advance=1, description=desc)
        return
    start, done = time.perf_counter(), 0
    every = max(1, total // 20)

    def advance(desc: str) -> None:
        nonlocal done
        done += 1
        if done % every == 0 or done == total:
            rate = done / max(time.perf_counter() - start, 1e-9)
            eta = (total - done) / rate
            print(
                f"{desc}: {done}/{total} ({rate:.1f}/s, ETA {eta:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    yield advance
