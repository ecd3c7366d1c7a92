"""What the two language pools (``hf-text``, ``hf-causal``) share when they build on the embedded
text suite: the cache folder, the encoded splits on disk, the record, and the fine-tunes run in
worker processes.

A pool lives under ``root/<key>/``, ``key`` the first 12 hex digits of the SHA-256 of
everything the pool depends on (config, model weights, the suite's texts), so a different
model, setting or data version never collides; every file is written whole
(:func:`rmtllmf._io.atomic_output`) and a finished piece is never recomputed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray

from rmtllmf._io import atomic_output, write_text_atomic
from rmtllmf.data.text import TEXT_TASKS, TextSplit
from rmtllmf.pools.base import LoadedPool, ModelT, PoolRecord, Split
from rmtllmf.pools.workers import in_workers

Encode = Callable[[str, int, list[str]], NDArray[Any]]
"""``encode(task, index, texts)``: the model's input rows for one split of task ``index``."""
FinetuneJob = Callable[[str, str, str, str, int], float]
"""A worker ``job(cfg_json, base_dir, home, task, index)`` that writes
``home/finetuned/<task>.safetensors`` and returns its fine-tuning seconds."""


def ids_to_input(ids: torch.Tensor) -> torch.Tensor:
    """A batch of token ids (int32 on disk) to the model's input (int64)."""
    return ids.long()


class TextSuitePool(LoadedPool[ModelT]):
    """What a pool on the text suite adds: its identity (``family`` and the cache key) and the
    suite's class counts."""

    family: ClassVar[str]
    root: Path

    @property
    def pool_id(self) -> str:
        """Identity of this pool in result databases (its cache key)."""
        return f"{self.family}-{self.root.name}"

    def n_classes(self, task: str) -> int:
        """Number of classes of ``task``."""
        return len(TEXT_TASKS[task].classes)


def pool_home(root: str | Path, key_source: str, *folders: str) -> Path:
    """``root/<key>`` with its ``data`` and ``folders`` created (``key``: see module docs)."""
    home = Path(root) / hashlib.sha256(key_source.encode()).hexdigest()[:12]
    for folder in ("data", *folders):
        (home / folder).mkdir(parents=True, exist_ok=True)
    return home


def encoded_splits(
    tasks: Sequence[str],
    home: Path,
    texts: Mapping[str, Mapping[str, TextSplit]],
    splits: Sequence[str],
    encode: Encode,
) -> dict[str, dict[str, Split]]:
    """Every task's encoded splits: ``data/<task>.npz`` (``<split>_x`` rows, ``<split>_y``
    labels) and the texts themselves in ``data/<task>.json``, written where missing, then
    loaded."""
    data: dict[str, dict[str, Split]] = {}
    for index, task in enumerate(tasks):
        file = home / "data" / f"{task}.npz"
        if not file.exists():
            arrays: dict[str, Any] = {}
            for split in splits:
                words, labels = texts[task][split]
                arrays[f"{split}_x"] = encode(task, index, words)
                arrays[f"{split}_y"] = labels
            with atomic_output(file, suffix=".npz") as tmp:
                np.savez(tmp, **arrays)
            write_text_atomic(
                home / "data" / f"{task}.json",
                json.dumps({s: texts[task][s][0] for s in splits}, ensure_ascii=False),
            )
        with np.load(file) as z:
            data[task] = {s: (z[f"{s}_x"], z[f"{s}_y"]) for s in splits}
    return data


def stored_record(home: Path, config: dict[str, Any], base_dir: Path) -> PoolRecord:
    """The pool's record: ``home/pool.json`` where written before, else a new one of
    ``config``."""
    file = home / "pool.json"
    if file.exists():
        return PoolRecord.load(file)
    return PoolRecord(config=config, base_file=str(base_dir))


def run_finetunes(
    job: FinetuneJob,
    cfg_json: str,
    base_dir: Path,
    home: Path,
    tasks: Sequence[str],
    record: PoolRecord,
    *,
    workers: int,
    progress: bool,
    what: str,
) -> dict[str, Path]:
    """Fine-tune every task whose ``finetuned/<task>.safetensors`` is missing, ``workers`` at
    a time; their seconds go into ``record`` (and their stale accuracies out of it). Returns
    each task's fine-tuned file."""
    files = {t: home / "finetuned" / f"{t}.safetensors" for t in tasks}
    jobs = [
        (cfg_json, str(base_dir), str(home), t, i)
        for i, (t, f) in enumerate(files.items())
        if not f.exists()
    ]
    if jobs and progress:
        print(f"fine-tuning {len(jobs)} {what} into {home}", flush=True)
    done = in_workers(job, jobs, workers, progress, f"fine-tuning {what}")
    for (_, _, _, task, _), seconds in zip(jobs, done, strict=True):
        record.seconds[task] = seconds
        record.finetuned.pop(task, None)
    return files
