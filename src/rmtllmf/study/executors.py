"""Where the sweep's work executes: in this process, in local worker processes, or on Ray.

The unit of the sweep is a *channel-use group* (:func:`~rmtllmf.study.sweep.pending_runs`): one
reception (channel draw, transmission, decoding) and every run that shares it, i.e. the same
channel use under each defense. A worker computes the group and *returns* its
:class:`~rmtllmf.study.store.FinishedRun` rows; only the driver writes ``results.db``
(:func:`~rmtllmf.study.sweep.run_sweep` commits each row as it arrives). So resuming is the same
under every executor, a worker that dies mid-group leaves nothing behind (the group is run
again, by Ray's retry or by the next sweep), and no run is ever written twice. The sweep's
other work on the pool (eq. 6's ``λ_N`` scored per grid value, the rank spectra per reception)
goes through :meth:`Executor.map_calls`: a top-level function of the pool and one item, run on
the same workers, results in the items' order.

Workers reach the model pool through a :data:`PoolFactory`: a picklable, hashable, argument-free
callable that loads the pool from its cache (built once by the driver before any task starts).
Each worker process loads it on its first task and keeps it until the executor is closed.

* :class:`InProcess`: the driver runs everything itself;
* :class:`ProcessExecutor`: ``workers`` local processes (``spawn``), started on first use and
  kept until :meth:`~ProcessExecutor.close`, tasks handed out as workers free up (so a slow
  group never holds back a fixed share of the plan);
* :class:`RayExecutor`: each task is a Ray task with declared resources (fractions of a GPU
  let several runs share one), on a local Ray started with ``workers`` CPUs or on an existing
  cluster (``address``); tasks whose worker dies are retried by Ray (``max_retries``).

Every executor is a context manager; closing one that is not running does nothing, and a closed
one starts again on its next use.
"""

from __future__ import annotations

import multiprocessing
import time
from abc import abstractmethod
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from rmtllmf._io import Closing
from rmtllmf._malloc import malloc_env
from rmtllmf.errors import InputError
from rmtllmf.pools.base import ModelPool
from rmtllmf.study.experiment import Reception, receive, reception_key, run_experiment
from rmtllmf.study.plan import PlannedRun
from rmtllmf.study.ray_cluster import address_answers, join_error, token_auth_env
from rmtllmf.study.store import FinishedRun, finished_run, run_key

PoolFactory = Callable[[], ModelPool]
"""Loads the study's model pool in a worker: picklable, hashable and argument-free."""

T = TypeVar("T")
R = TypeVar("R")
PoolCall = Callable[[ModelPool, T], R]
"""A function of the pool and one item (top level, so workers can import it)."""


def iter_group(
    pool: ModelPool,
    pool_id: str,
    runs: Sequence[PlannedRun],
    accuracies: dict[tuple[str, str, str, str], float] | None = None,
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
            cache = None  # the last reception (and its merge) goes before the next arrives
            cache = (rkey, receive(pool, run.config))
            cache[1].accuracies = shared
        result = run_experiment(pool, run.config, cache[1])
        yield finished_run(run_key(pool_id, run.config), run.role, result, time.perf_counter() - t0)


class Executor(Protocol):
    """Runs the sweep's work on the pool; yields or returns what the workers return."""

    def map_groups(
        self, pool_id: str, groups: Sequence[Sequence[PlannedRun]]
    ) -> Iterator[FinishedRun]:
        """Every run of ``groups``, each once, as they complete (any order); stops early when
        the consumer stops."""
        ...

    def map_calls(self, fn: PoolCall[T, R], items: Sequence[T]) -> list[R]:
        """``[fn(pool, item) for item in items]``, spread over the workers, in order."""
        ...

    def close(self) -> None:
        """Stop the workers (the next use starts them again)."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@dataclass
class InProcess(Closing):
    """The driver runs every group and call itself, on ``pool``."""

    pool: ModelPool
    accuracies: dict[tuple[str, str, str, str], float] = field(default_factory=dict)

    def map_groups(
        self, pool_id: str, groups: Sequence[Sequence[PlannedRun]]
    ) -> Iterator[FinishedRun]:
        for group in groups:
            yield from iter_group(self.pool, pool_id, group, self.accuracies)

    def map_calls(self, fn: PoolCall[T, R], items: Sequence[T]) -> list[R]:
        return [fn(self.pool, item) for item in items]

    def close(self) -> None:
        """Nothing to stop."""


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


def call_on_pool(factory: PoolFactory, fn: PoolCall[T, R], item: T, threads: int) -> R:
    """A worker's task: ``fn(pool, item)`` on the factory's pool, on ``threads`` threads."""
    _set_threads(threads)
    return fn(_worker_pool(factory), item)


def _in_flight(
    items: Sequence[T],
    submit: Callable[[T], Any],
    wait_one: Callable[[list[Any]], tuple[list[Any], list[Any]]],
    result: Callable[[Any], R],
    cancel: Callable[[Any], None],
    slots: int,
) -> Iterator[tuple[int, R]]:
    """``(index, result)`` of every item as its task completes: at most ``2 * slots`` tasks
    submitted at once (a spare one per worker), the next item submitted as one completes.
    When the consumer stops (or a task fails), ``cancel`` is called on every task in flight:
    Ray kills running ones; a process pool drops those not started and finishes the rest."""
    queue = list(reversed(list(enumerate(items))))
    running: list[Any] = []
    index: dict[Any, int] = {}  # a task (future or object ref) -> its item
    try:
        while queue or running:
            while queue and len(running) < 2 * slots:
                i, item = queue.pop()
                task = submit(item)
                index[task] = i
                running.append(task)
            done, running = wait_one(running)
            for task in done:
                yield index.pop(task), result(task)
    finally:
        for task in running:
            cancel(task)


def _futures_wait(running: list[Future[Any]]) -> tuple[list[Future[Any]], list[Future[Any]]]:
    done, pending = wait(running, return_when=FIRST_COMPLETED)
    return list(done), list(pending)


def _in_order(done: Iterator[tuple[int, R]], n: int) -> list[R]:
    """The results of :func:`_in_flight` in the items' order."""
    out: dict[int, R] = dict(done)
    return [out[i] for i in range(n)]


class _Workers(Closing):
    """An executor whose tasks run on workers that reach the pool through a factory: groups
    as :func:`run_group` tasks, calls as :func:`call_on_pool` tasks."""

    @abstractmethod
    def _map(self, fn: Callable[..., R], items: Sequence[T], *args: Any) -> Iterator[tuple[int, R]]:
        """``(index, fn(factory, *args, item, threads))`` of every item as its task completes."""

    def map_groups(
        self, pool_id: str, groups: Sequence[Sequence[PlannedRun]]
    ) -> Iterator[FinishedRun]:
        for _, rows in self._map(run_group, [list(g) for g in groups], pool_id):
            yield from rows

    def map_calls(self, fn: PoolCall[T, R], items: Sequence[T]) -> list[R]:
        return _in_order(self._map(call_on_pool, items, fn), len(items))


@dataclass
class ProcessExecutor(_Workers):
    """``workers`` local processes, each on ``threads`` threads, fed one task at a time; the
    processes (and the pool each loaded) live until :meth:`close`."""

    factory: PoolFactory
    workers: int
    threads: int = 1
    _ex: ProcessPoolExecutor | None = field(default=None, init=False, repr=False)

    def _executor(self) -> ProcessPoolExecutor:
        if self._ex is None:
            ctx = multiprocessing.get_context("spawn")
            self._ex = ProcessPoolExecutor(self.workers, mp_context=ctx)
        return self._ex

    def _map(self, fn: Callable[..., R], items: Sequence[T], *args: Any) -> Iterator[tuple[int, R]]:
        """``(index, fn(factory, *args, item, threads))`` as each completes."""
        if not items:
            return iter(())
        ex = self._executor()
        return _in_flight(
            items,
            lambda item: ex.submit(fn, self.factory, *args, item, self.threads),
            _futures_wait,
            self._result,
            lambda future: future.cancel(),
            self.workers,
        )

    def _result(self, future: Future[R]) -> R:
        """``future``'s result; a pool whose worker died is dropped (the next use starts a
        fresh one) before the error goes on."""
        try:
            return future.result()
        except BrokenProcessPool:
            if self._ex is not None:
                self._ex.shutdown(wait=False, cancel_futures=True)
                self._ex = None
            raise

    def close(self) -> None:
        """Stop the worker processes."""
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None


@dataclass
class RayExecutor(_Workers):
    """Each task is a Ray task (``cpus_per_run`` CPUs, ``gpus_per_run`` GPUs, fractions
    allowed). ``address`` joins an existing cluster (``ray start --head``); without it a
    local Ray is started with ``workers`` CPUs on first use and stopped by :meth:`close`. At
    most ``workers`` tasks run at once (plus one queued each; ``0`` on a cluster: its CPUs over
    ``cpus_per_run``); a task whose worker dies is retried up to ``max_retries`` times."""

    factory: PoolFactory
    workers: int
    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    max_retries: int = 3
    _started: bool = field(default=False, init=False, repr=False)

    def _ray(self) -> Any:
        if self.address:
            token_auth_env()  # before Ray's import, which reads the mode (see ray_cluster)
        try:
            import ray
        except ImportError as exc:
            raise InputError(
                "--executor ray needs Ray; install it with: pip install 'rmtllmf[ray]'"
            ) from exc
        return ray

    def _map(self, fn: Callable[..., R], items: Sequence[T], *args: Any) -> Iterator[tuple[int, R]]:
        """``(index, fn(factory, *args, item, threads))`` as each completes."""
        ray = self._ray()
        if not items:
            return iter(())
        self._start(ray)
        task = ray.remote(fn).options(
            num_cpus=self.cpus_per_run,
            num_gpus=self.gpus_per_run,
            max_retries=self.max_retries,
            retry_exceptions=False,
        )
        factory = ray.put(self.factory)
        threads = max(1, int(self.cpus_per_run))
        slots = self.workers or max(
            1,
            int(ray.cluster_resources().get("CPU", 1) / self.cpus_per_run),
        )

        def result(ref: Any) -> R:
            try:
                value: R = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, InputError):
                    raise exc.cause from None  # the user's error, as in-process
                raise
            return value

        return _in_flight(
            items,
            lambda item: task.remote(factory, *args, item, threads),
            lambda running: ray.wait(running, num_returns=1),
            result,
            lambda ref: ray.cancel(ref, force=True),
            slots,
        )

    def close(self) -> None:
        """Stop the local Ray this executor started (a joined cluster keeps running)."""
        if self._started:
            self._ray().shutdown()
            self._started = False

    def _start(self, ray: Any) -> None:
        """Connect to ``address``, or start a local Ray, unless Ray is running already."""
        if ray.is_initialized():
            return
        threads = {"OMP_NUM_THREADS": str(max(1, int(self.cpus_per_run)))}
        env = {"env_vars": {**threads, **malloc_env()}}
        if self.address:
            if address_answers(self.address) is False:  # Ray would retry for seconds first
                raise join_error(self.address, ConnectionRefusedError(self.address))
            try:
                ray.init(address=self.address, runtime_env=env, log_to_driver=True)
            except ConnectionError as exc:
                raise join_error(self.address, exc) from exc
        else:
            ray.init(
                num_cpus=max(1, self.workers),
                include_dashboard=False,
                runtime_env=env,
                object_store_memory=256 * 1024**2,
            )
        self._started = True
