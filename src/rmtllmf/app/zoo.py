"""What ``rmtllmf zoo build`` does: build or reuse the embedded zoo, merge its experts cleanly and
summarise both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rmtllmf._malloc import keep_freed_memory
from rmtllmf.app.tiny_vit_family import announce_zoo
from rmtllmf.errors import InputError
from rmtllmf.pools.tiny_vit_pool import TinyVitPool, build_zoo
from rmtllmf.pools.zoo_config import ZooConfig, load_base
from rmtllmf.study.clean_merge import MergeReport, evaluate_clean_merge


def build_zoo_summary(
    cfg: ZooConfig, root: Path, *, workers: int, progress: bool
) -> dict[str, Any]:
    """Build (or reuse) the zoo of ``cfg`` under ``root`` with ``workers`` processes, merge its
    experts by task arithmetic (λ chosen on validation) and return :func:`zoo_summary`."""
    if workers < 1:
        raise InputError(f"--workers {workers} is below 1; give 1 or more")
    if cfg.base is not None and not Path(cfg.base).is_file():
        raise InputError(f"--base {cfg.base} does not exist; give a tiny-vit .safetensors base")
    if cfg.base is not None:
        load_base(cfg.base)  # a checkpoint of another architecture fails here, before any work
    keep_freed_memory()
    announce_zoo(root, cfg, workers)
    zoo = build_zoo(root, cfg, progress=progress, workers=workers)
    return zoo_summary(zoo, cfg, evaluate_clean_merge(zoo, cfg.tasks))


def zoo_summary(zoo: TinyVitPool, cfg: ZooConfig, report: MergeReport) -> dict[str, Any]:
    """The JSON record: the config, accuracies per task and their means, the merge and cosines."""
    base = {t: zoo.base_accuracy(t) for t in cfg.tasks}
    ft = {t: zoo.finetuned_accuracy(t) for t in cfg.tasks}
    off = report.cosine[~np.eye(len(cfg.tasks), dtype=bool)]
    return {
        "root": str(zoo.root),
        "config": cfg.model_dump(),
        "base_test": base,
        "finetuned_test": ft,
        "merged_test": report.test_accuracy,
        "mean_base": float(np.mean(list(base.values()))),
        "mean_finetuned": float(np.mean(list(ft.values()))),
        "mean_merged": float(np.mean(list(report.test_accuracy.values()))),
        "lambda": report.scaling,
        "normalized_accuracy": report.normalized,
        "gap_recovery": report.gap_recovery,
        "cosine_offdiag_mean": float(off.mean()) if off.size else float("nan"),
        "cosine_offdiag_max": float(off.max()) if off.size else float("nan"),
        "cosine": report.cosine.tolist(),
    }
