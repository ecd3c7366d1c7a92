"""A pool factory whose first evaluation kills its own worker process (SIGKILL), once per
marker file: Ray must retry that task on a fresh worker. Imported by Ray's workers, so it lives
in a module of its own (tests/ is on their PYTHONPATH)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any

from rmtllmf.reproduce import StudyPool


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
