"""Where one run of the study spends its time, stage by stage (issue 21's profile).

Times the stages of :func:`rmtllmf.study.experiment.run_experiment` on the embedded zoo (or the
pool of ``--config``), on one thread, by wrapping the functions each stage calls (no profiler
overhead): channel draw (eq. 5),
transmission and reception, merge (eq. 6), the blind stage of a receiver defense, freeze,
realignment (its training steps; its validation scored apart), evaluation on the test split,
the interference analysis, and the rest (model builds, state digests, bookkeeping). Beside each
stage's seconds it counts the minor page faults the stage took (memory the kernel had to hand
over afresh: the cost of large tensors allocated and freed again).

Two channel uses are profiled, as the sweep runs them (one reception, then each defense):
Fig. 2's group (N = 4, sum-rate, snr link: ``none`` and ``r-mtllmf``, the pair that makes up
93% of the full grid) and the ablation's (N = 8, the four paper defenses, the undefended run
with the interference analysis).

    python benchmarks/profile_run.py --cache CACHE [--config STUDY.yaml] [--json OUT.json]

``CACHE`` is a ``rmtllmf reproduce --cache`` directory holding the pool (built there if absent:
about 6 minutes for the default zoo). The groups take the config's realignment, channel and
symbol-link settings.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from threadpoolctl import threadpool_limits

import rmtllmf.study.experiment as exp
from rmtllmf._malloc import keep_freed_memory, malloc_env
from rmtllmf.app.reproduce import ReproduceConfig, build_pool, load_config, sweep_config
from rmtllmf.fusion import MergeConfig

realign_mod = importlib.import_module("rmtllmf.defense.realign")

STAGES = (
    "channel draw",
    "transmission",
    "merge",
    "blind stage",
    "freeze",
    "realign steps",
    "realign validation",
    "evaluation",
    "analysis",
)


def minor_faults() -> int:
    """Minor page faults of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class StageClock:
    """Seconds and minor page faults per stage, each stage's own (a nested stage's share is not
    its parent's)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.faults: dict[str, int] = defaultdict(int)
        self._stack: list[str] = []

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append(stage)
            t0, f0 = time.perf_counter(), minor_faults()
            try:
                return fn(*args, **kwargs)
            finally:
                spent, faults = time.perf_counter() - t0, minor_faults() - f0
                self._stack.pop()
                self.seconds[stage] += spent
                self.faults[stage] += faults
                if self._stack:
                    self.seconds[self._stack[-1]] -= spent
                    self.faults[self._stack[-1]] -= faults

        return timed


@contextmanager
def instrumented(clock: StageClock, pool: Any) -> Iterator[None]:
    """Wrap the stage functions where the run looks them up; restore them afterwards."""
    patches = [
        (exp, "channel_mse", "channel draw"),
        (exp, "transmit_link", "transmission"),
        (exp, "transmit_sum", "transmission"),
        (exp, "reception_from", "transmission"),
        (exp, "merge_task_vectors", "merge"),
        (exp, "_blind_vectors", "blind stage"),
        (exp, "interference_analysis", "analysis"),
        (realign_mod, "reload_embeddings", "freeze"),
        (realign_mod, "realign", "realign steps"),
        (realign_mod, "_val_score", "realign validation"),
        (pool, "task_accuracy", "evaluation"),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, stage in patches:
        setattr(obj, name, clock.wrap(stage, getattr(obj, name)))
    try:
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


def profile_group(pool: Any, configs: list[exp.ExperimentConfig]) -> dict[str, Any]:
    """One channel use and its runs, as the sweep does them; seconds per stage and per run."""
    clock = StageClock()
    t0, f0 = time.perf_counter(), minor_faults()
    per_run = {}
    with instrumented(clock, pool):
        rx = exp.receive(pool, configs[0])
        for cfg in configs:
            t = time.perf_counter()
            exp.run_experiment(pool, cfg, rx)
            per_run[cfg.defense] = round(time.perf_counter() - t, 3)
    total, faults = time.perf_counter() - t0, minor_faults() - f0
    stages = {s: round(clock.seconds.get(s, 0.0), 3) for s in STAGES}
    stages["rest"] = round(total - sum(clock.seconds.values()), 3)
    stage_faults = {s: clock.faults.get(s, 0) for s in STAGES}
    stage_faults["rest"] = faults - sum(clock.faults.values())
    return {
        "total": round(total, 3),
        "faults": faults,
        "stages": stages,
        "stage_faults": stage_faults,
        "per_run": per_run,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument(
        "--config", type=Path, default=None, help="a study config (default: the zoo)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the profile here")
    args = parser.parse_args()
    keep_freed_memory()
    allocator = malloc_env()  # empty: the system's behaviour (RMTLLMF_SYSTEM_MALLOC=1)
    print("allocator settings:", allocator or "the system's")
    torch.set_num_threads(1)
    cfg = ReproduceConfig() if args.config is None else load_config(args.config)
    sweep = sweep_config(cfg)
    pool = build_pool(cfg, args.cache, progress=True)
    tasks = sweep.tasks
    common = {
        "merge": MergeConfig(scaling=0.3),
        "link": "snr",
        "realign": sweep.realign,
        "channel": sweep.channel,
        "symbol": sweep.symbol,
    }
    fig2 = [
        exp.ExperimentConfig(tasks=tasks[:4], scenario="sum-rate", defense=d, **common)
        for d in ("none", "r-mtllmf")
    ]
    ablation = [
        exp.ExperimentConfig(
            tasks=tasks,
            scenario="sum-rate",
            defense=d,
            analysis=sweep.analysis if d == "none" else None,
            **common,
        )
        for d in ("none", "freeze", "realign", "r-mtllmf")
    ]
    with threadpool_limits(limits=1):
        out = {
            "fig2 (N=4)": profile_group(pool, fig2),
            "ablation (N=8)": profile_group(pool, ablation),
        }
    width = max(len(s) for s in (*STAGES, "rest"))
    for name, prof in out.items():
        print(f"{name}: {prof['total']:.2f} s, {prof['faults']:,} minor faults; per run", end=" ")
        print(prof["per_run"])
        for stage, sec in prof["stages"].items():
            share, faults = 100 * sec / prof["total"], prof["stage_faults"][stage]
            print(f"  {stage:<{width}} {sec:7.3f} s  {share:5.1f}%  {faults:>11,} faults")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak RSS: {peak:.2f} GB")
    if args.json:
        meta = {"allocator": allocator, "peak_rss_gb": peak}
        args.json.write_text(json.dumps({**meta, **out}, indent=2))


if __name__ == "__main__":
    main()
