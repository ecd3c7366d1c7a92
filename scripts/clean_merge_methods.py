"""The clean merge of all the pool's tasks by each method of the registry, beside its floors.

    python scripts/clean_merge_methods.py --cache CACHE [--config configs/minilm-text.yaml]
        [--out docs/text-merge-methods.md]

For task arithmetic (eq. 6), TIES at three densities and DARE (drop rate 0.9, task-arithmetic
combiner), ``lambda`` is chosen on *validation* (the grid below; TIES's disjoint mean keeps each
vector's entries at their own size, so its grid reaches 2). Reports on *test*: normalized
accuracy (eq. 13), mean absolute accuracy and gap recovery
``(merge - base) / (fine-tuned - base)`` in mean accuracy, beside the floors (the base model
alone, chance) and the fine-tuned experts. ``CACHE`` is a ``rmtllmf reproduce --cache``
directory (the pool is built there if absent).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmtllmf._malloc import keep_freed_memory
from rmtllmf.app.reproduce import ReproduceConfig, build_pool, load_config, pool_tasks
from rmtllmf.metrics import gap_recovery, normalized_accuracy
from rmtllmf.study.clean_merge import evaluate_clean_merge

TA_GRID = tuple(round(0.05 * i, 2) for i in range(1, 21))
TIES_GRID = tuple(round(0.2 * i, 1) for i in range(1, 11))
SETTINGS: tuple[tuple[str, dict[str, Any], tuple[float, ...]], ...] = (
    ("task-arithmetic", {}, TA_GRID),
    ("ties", {"density": 0.2}, TIES_GRID),
    ("ties", {"density": 0.5}, TIES_GRID),
    ("ties", {"density": 0.8}, TIES_GRID),
    ("dare", {"drop_rate": 0.9}, TA_GRID),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None, help="study config (default: zoo)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--workers", type=int, default=2, help="processes that build the pool")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    cfg = ReproduceConfig() if args.config is None else load_config(args.config)
    pool = build_pool(cfg, args.cache, progress=True, workers=args.workers)
    tasks = tuple(pool_tasks(cfg))
    ft = {t: pool.finetuned_accuracy(t, "test") for t in tasks}
    base = {t: pool.base_accuracy(t, "test") for t in tasks}
    chance = {t: 1.0 / pool.n_classes(t) for t in tasks}

    def row(name: str, lam: str, val: str, acc: dict[str, float], gap: bool = True) -> str:
        cells = (normalized_accuracy(acc, ft), np.mean(list(acc.values())))
        recovered = f"{gap_recovery(acc, base, ft):.3f}" if gap else "—"
        return f"| {name} | {lam} | {val} | {cells[0]:.3f} | {cells[1]:.3f} | {recovered} |"

    command = "python scripts/clean_merge_methods.py --cache CACHE" + (
        f" --config {args.config}" if args.config else ""
    )
    lines = [
        f"`{command}`",
        "",
        f"Clean merge of {len(tasks)} tasks ({', '.join(tasks)}); λ chosen on validation, "
        "accuracy on test.",
        "",
        "| merge | λ | validation (normalized) | normalized | mean accuracy | gap recovery |",
        "|---|---|---|---|---|---|",
        row("fine-tuned experts (each its own task)", "—", "—", ft),
        row("base model alone (floor)", "—", "—", base),
        row("chance (floor)", "—", "—", chance, gap=False),  # below the base: not a recovery
    ]
    for method, options, grid in SETTINGS:
        start = time.perf_counter()
        report = evaluate_clean_merge(pool, tasks, method, grid, options=options)
        opts = ", ".join(f"{k} {v}" for k, v in options.items())
        name = f"{method} ({opts})" if opts else method
        val = f"{report.val_normalized[report.scaling]:.3f}"
        lines.append(row(name, f"{report.scaling:g}", val, report.test_accuracy))
        print(lines[-1], f"({time.perf_counter() - start:.0f} s)", flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
