"""Where the sweep's runs execute: in this process, in local worker processes, or on Ray.

The unit of work is a *channel-use group* (:func:`~rmtllmf.study.sweep.pending_runs`): one
reception (channel draw, transmission, decoding) and every run that shares it, i.e. the same
channel use under each defense. A worker computes the group and *returns* its
:class:`~rmtllmf.study.store.FinishedRun` rows; only the driver writes ``results.db``
(:func:`~rmtllmf.study.sweep.run_sweep` commits each row as it arrives). So resuming is the same
under every executor, a worker that dies mid-group leaves nothing behind (the group is run
again, by Ray's retry or by the next sweep), and no run is ever written twice.

Workers reach the model pool through a :data:`PoolFactory`: a picklable, hashable, argument-free
callable that loads the pool from its cache (built once by the driver before any task starts).
Each worker process loads it on its first group and keeps it for the rest.

* :class:`InProcess`: the driver runs the groups itself, committing run by run;
* :class:`ProcessExecutor`: ``workers`` local processes (``spawn``), groups handed out as
  workers free up (so a slow group never holds back a fixed share of the plan);
* :class:`RayExecutor`: each group is a Ray task with declared resources (fractions of a GPU
  let several runs share one), on a local Ray started with ``workers`` CPUs or on an existing
  cluster (``address``); tasks whose worker dies are retried by Ray (``max_retries``).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from rmtllmf.errors import InputError
from rmtllmf.pools.base import ModelPool
from rmtllmf.study.experiment import Reception, receive, reception_key, run_experiment
from rmtllmf.study.plan import PlannedRun
from rmtllmf.study.store import FinishedRun, finished_run, run_key

PoolFactory = Callable[[], ModelPool]
"""Loads the study's model pool in a worker: picklable, hashable and argument-free."""


def iter_group(
    pool: ModelPool,
    pool_id: str,
    runs: Sequence[PlannedRun],
    accuracies: dict[tuple[str, str, str], float] | None = None,
) -> Iterator[FinishedRun]:
    """Run one channel-use group: receive once, then each run on that reception. A run's
    seconds include the reception when it is the group's first. ``accuracies`` (the
    :attr:`~rmtllmf.study.experiment.Reception.accuracies` of ``pool``) is shared by the
    group's receptions, and across groups when the caller keeps it."""
    shared = {} if accuracies is None else accuracies
    cache: tuple[str, Reception] | None = None
    for run in runs:
        t0 = time.perf_counter()
        rkey = reception_key(run.config)
        if cache is None or cache[0] != rkey:
            cache = (rkey, receive(pool, run.config))
            cache[1].accuracies = shared
        result = run_experiment(pool, run.config, cache[1])
        yield finished_run(run_key(pool_id, run.config), run.role, result, time.perf_counter() - t0)


class Executor(Protocol):
    """Runs channel-use groups and yields their finished runs as they complete (any order)."""

    def map_groups(
        self, pool_id: str, groups: Sequence[Sequence[PlannedRun]]
    ) -> Iterator[FinishedRun]:
        """Every run of ``groups``, each once; stops early when the consumer stops."""
        ...


@dataclass
class InProcess:
    """The driver runs every group itself, on ``pool``."""

    pool: ModelPool
    accuracies: dict[tuple[str, str, str], float] = field(default_factory=dict)

    def map_groups(
        self, pool_id: str, groups: Sequence[Sequence[PlannedRun]]
    ) -> Iterator[FinishedRun]:
        for group in groups:
            yield from iter_group(self.pool, pool_id, group, self.accuracies)


_WORKER: dict[str, Any] = {}
"""A worker process's state: its pool (per factory), the test accuracies measured on it (by
split, task and state digest) and its thread limits."""


def _set_threads(threads: int) -> None:
    """Torch and the BLAS pools on ``threads`` threads in this (worker) process."""
    import torch
    from threadpoolctl import threadpool_limits

    if _WORKER.get("threads") != threads:
        torch.set_num_threads(threads)
        _WORKER["limits"] = threadpool_limits(limits=threads)
        _WORKER["threads"] = threads


def _worker_pool(factory: PoolFactory) -> ModelPool:
    """This process's pool of ``factory``, loaded on first use and kept."""
    key: Hashable = factory
    pools: dict[Hashable, ModelPool] = _WORKER.setdefault("pools", {})
    if key not in pools:
        pools.clear()  # one pool per worker: a new study replaces the last
        pools[key] = factory()
        _WORKER["accuracies"] = {}
    return pools[key]


def run_group(
    factory: PoolFactory, pool_id: str, runs: Sequence[PlannedRun], threads: int
) -> list[FinishedRun]:
    """A worker's task: one channel-use group on the factory's pool, on ``threads`` threads."""
    _set_threads(threads)
    pool = _worker_pool(factory)
    return list(iter_group(pool, pool_id, runs, _WORKER["accuracies"]))


@dataclass
class ProcessExecutor:
    """``workers`` local processes, each on ``threads`` threads, fed one group at a time."""

    factory: PoolFactory
    workers: int
    threads: int = 1

    def map_groups(
        self, pool_id: str, groups: Sequence[Sequence[PlannedRun]]
    ) -> Iterator[FinishedRun]:
        if not groups:
            return
        ctx = multiprocessing.get_context("spawn")
        ex = ProcessPoolExecutor(min(self.workers, len(groups)), mp_context=ctx)
        queue = list(reversed(groups))
        running: set[Future[list[FinishedRun]]] = set()
        try:
            while queue or running:
                while queue and len(running) < 2 * self.workers:  # a spare one per worker
                    group = list(queue.pop())
                    running.add(ex.submit(run_group, self.factory, pool_id, group, self.threads))
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield from future.result()
        finally:
            ex.shutdown(wait=True, cancel_futures=True)


@dataclass
class RayExecutor:
    """Each group is a Ray task (``cpus_per_run`` CPUs, ``gpus_per_run`` GPUs, fractions
    allowed). ``address`` joins an existing cluster (``ray start --head``); without it a
    local Ray is started with ``workers`` CPUs and stopped afterwards. At most ``workers``
    groups run at once (plus one queued each; ``0`` on a cluster: its CPUs over
    ``cpus_per_run``); a task whose worker dies is retried up to ``max_retries`` times."""

    factory: PoolFactory
    workers: int
    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    max_retries: int = 3

    def map_groups(
        self, pool_id: str, groups: Sequence[Sequence[PlannedRun]]
    ) -> Iterator[FinishedRun]:
        try:
            import ray
        except ImportError as exc:
            raise InputError(
                "--executor ray needs Ray; install it with: pip install 'rmtllmf[ray]'"
            ) from exc
        if not groups:
            return
        started = self._start(ray)
        task = ray.remote(run_group).options(
            num_cpus=self.cpus_per_run,
            num_gpus=self.gpus_per_run,
            max_retries=self.max_retries,
            retry_exceptions=False,
        )
        factory = ray.put(self.factory)
        threads = max(1, int(self.cpus_per_run))
        slots = self.workers or max(
            1,
            int(ray.cluster_resources().get("CPU", 1) / self.cpus_per_run),  # type: ignore[no-untyped-call]
        )
        queue = list(reversed(groups))
        running: list[Any] = []
        try:
            while queue or running:
                while queue and len(running) < 2 * slots:
                    running.append(task.remote(factory, pool_id, list(queue.pop()), threads))
                done, running = ray.wait(running, num_returns=1)
                for ref in done:
                    try:
                        rows = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        if isinstance(exc.cause, InputError):
                            raise exc.cause from None  # the user's error, as in-process
                        raise
                    yield from rows
        finally:
            for ref in running:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()

    def _start(self, ray: Any) -> bool:
        """Connect to ``address``, or start a local Ray; whether this call started it."""
        if ray.is_initialized():
            return False
        env = {"env_vars": {"OMP_NUM_THREADS": str(max(1, int(self.cpus_per_run)))}}
        if self.address:
            try:
                ray.init(address=self.address, runtime_env=env, log_to_driver=True)
            except ConnectionError as exc:
                raise InputError(
                    f"no Ray cluster answers at --address {self.address}; start one with "
                    "`ray start --head` (it prints the address) or drop --address to run a "
                    "local Ray"
                ) from exc
            return True
        ray.init(
            num_cpus=max(1, self.workers),
            include_dashboard=False,
            runtime_env=env,
            object_store_memory=256 * 1024**2,
        )
        return True
