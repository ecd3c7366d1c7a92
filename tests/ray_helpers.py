"""Pool factories for the executor tests, imported by Ray's workers (so they live in a module of
their own; tests/ is on the workers' PYTHONPATH): one whose first evaluation kills its own
worker process (SIGKILL), once per marker file, and one that logs every load."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any

from rmtllmf.app.reproduce import StudyPool


@dataclass(frozen=True)
class KillOnce:
    """``inner``'s pool; the first ``task_accuracy`` call anywhere (the marker does not exist
    yet) creates the marker and SIGKILLs the process it runs in, mid-task."""

    inner: StudyPool
    marker: str

    def __call__(self) -> Any:
        pool = self.inner()
        real = pool.task_accuracy

        def task_accuracy(*args: Any, **kwargs: Any) -> Any:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
            raise AssertionError("unreachable")

        pool.task_accuracy = task_accuracy
        return pool


@dataclass(frozen=True)
class CountLoads:
    """``inner``'s pool; each load appends this process's id to ``log``."""

    inner: StudyPool
    log: str

    def __call__(self) -> Any:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
        return self.inner()


def slow_echo(pool: Any, item: tuple[int, float]) -> tuple[int, int, int]:
    """``item``'s index after sleeping ``item[1]`` seconds, the pool's task count and the
    worker's process id (the later items finish first when the first one sleeps longest)."""
    import time

    time.sleep(item[1])
    return item[0], len(pool.finetuned), os.getpid()
