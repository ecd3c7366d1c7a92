"""Running a pool's independent jobs (data generation, fine-tunes) in worker processes."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

import torch

from rmtllmf._progress import progress_bar

_T = TypeVar("_T")


def _one_thread() -> None:
    torch.set_num_threads(1)


def in_workers(
    fn: Callable[..., _T], jobs: Sequence[tuple[Any, ...]], workers: int, progress: bool, what: str
) -> list[_T]:
    """``fn(*job)`` for every job, results in job order: in this process when ``workers == 1``,
    else in ``workers`` single-threaded processes (on small models, two 1-thread processes beat
    one 2-thread one on these shared cores)."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        min(workers, len(jobs)), mp_context=ctx, initializer=_one_thread
    ) as ex:
        futures = [ex.submit(fn, *job) for job in jobs]
        with progress_bar(progress, what, len(futures)) as advance:
            for future in as_completed(futures):
                future.result()
                advance(what)
        return [f.result() for f in futures]


__all__ = ["in_workers"]
