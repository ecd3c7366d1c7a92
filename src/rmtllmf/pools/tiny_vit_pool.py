"""The embedded model zoo: the tiny base, its task heads and eight fine-tuned models, cached.

``build_zoo(root, ZooConfig())`` makes (or reuses) under ``root/<key>/`` (``key`` hashes the
config and the base checkpoint, so different settings never collide):

* ``data/<task>.npz``: train / val / test / head splits of the embedded suite;
* ``heads.safetensors``: each task's fixed head from the base model's embeddings (a cosine
  linear probe, or the class prototypes);
* ``data/anchor.npz`` and ``anchor.safetensors``: public images (pretext images and unlabelled
  images of every task's domain) and the base's normalised embeddings of them, the
  function-space anchor of the fine-tunes (:class:`rmtllmf.training.loops.Anchor`; a user
  anchors on all but its own domain; absent when ``anchor_weight`` is 0);
* ``finetuned/<task>.safetensors``: full fine-tunes against the fixed heads;
* ``zoo.json``: the resolved config, seeds, base and fine-tuned accuracy per task and split.

The default config gets the package's shipped heads and experts instead of fitting and
training them (:func:`~rmtllmf.pools.zoo_config.shipped_experts`); its data is generated here
like any other's, and the anchor, which only the fine-tuning needs, is not.

Finished pieces are never recomputed; an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from safetensors.torch import load_file, save_file
from torch import nn

from rmtllmf._io import atomic_output
from rmtllmf.data.synthetic import TASK_NAMES, TASKS
from rmtllmf.errors import CheckpointError, InputError
from rmtllmf.models.tiny_vit import (
    EMBEDDING_PARAMS,
    PrototypeHead,
    TinyVit,
    normalise_images,
)
from rmtllmf.pools.base import LoadedPool, PoolRecord, Split, measure_task
from rmtllmf.pools.workers import in_workers
from rmtllmf.pools.zoo_config import (
    TRAINABLE,
    ZooConfig,
    base_path,
    digest,
    load_base,
    resolve_base,
    shipped_base_path,
    shipped_experts,
    shipped_zoo_dir,
)
from rmtllmf.pools.zoo_data import load_anchor, write_task_or_anchor
from rmtllmf.training.loops import (
    Anchor,
    accuracy,
    finetune,
    probe_head,
    prototype_head,
)


@dataclass
class TinyVitPool(LoadedPool[TinyVit]):
    """A built zoo: data, heads, base and fine-tuned state dicts, and the measured accuracies."""

    root: Path
    config: ZooConfig
    base: TinyVit
    heads: dict[str, PrototypeHead]
    data: dict[str, dict[str, Split]]
    finetuned: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    record: PoolRecord = field(default_factory=lambda: PoolRecord(config={}))

    def model_from_state(self, state: Mapping[str, torch.Tensor]) -> TinyVit:
        """A model of the base's architecture with ``state`` loaded."""
        model = TinyVit(self.base.config)
        model.load_state_dict(dict(state))
        return model.eval()

    def accuracy(self, model: TinyVit, task: str, split: str) -> float:
        """Accuracy of ``model`` on a task's split, with that task's head."""
        return accuracy(model, self.heads[task], *self.data[task][split])

    @property
    def pool_id(self) -> str:
        """Identity of this zoo in result databases (its cache key)."""
        return f"tiny-vit-{self.root.name}"

    @property
    def embedding_names(self) -> tuple[str, ...]:
        """The patch, class and position embeddings (the *freeze* module's parameters)."""
        return EMBEDDING_PARAMS

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` images to the model's input."""
        return normalise_images(images)

    def anchor(self, task: str | None = None) -> Anchor | None:
        """The function-space anchor ``task``'s fine-tune was trained with: every anchor image
        but those of its own domain (``None``: plain fine-tuning; ``task=None``: the whole set);
        made here when the zoo's experts were shipped."""
        ensure_anchor(self.config, self.root, self.base)
        return load_anchor(self.config, self.root, task)

    def n_classes(self, task: str) -> int:
        """Number of classes of ``task``."""
        return len(TASKS[task][1])

    def finetune_from(
        self, state: Mapping[str, torch.Tensor], task: str, seed: int, steps: int | None = None
    ) -> dict[str, torch.Tensor]:
        """What a user does: fine-tune a model starting from ``state`` on ``task``'s training
        split against its head, with the zoo's settings (:func:`train_expert`; ``steps``
        replaces the zoo's step count); returns the fine-tuned state. From the base with the
        zoo's seed and steps it is how the experts were made."""
        model = self.model_from_state(state).train()
        images, labels = self.data[task]["train"]
        cfg = self.config if steps is None else self.config.model_copy(update={"steps": steps})
        train_expert(cfg, model, self.heads[task], images, labels, seed, self.anchor(task))
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


def expert_seed(cfg: ZooConfig, task: str) -> int:
    """The seed the zoo fine-tunes ``task``'s expert with."""
    return cfg.seed * 1000 + cfg.tasks.index(task)


def train_expert(
    cfg: ZooConfig,
    model: TinyVit,
    head: nn.Module,
    images: NDArray[np.uint8],
    labels: NDArray[np.int64],
    seed: int,
    anchor: Anchor | None,
    *,
    progress: bool = False,
    description: str = "fine-tuning",
) -> None:
    """Fine-tune ``model`` in place with the zoo's settings (steps, batch, learning rate, weight
    decay, trainable parameters) and ``anchor``'s penalty."""
    torch.manual_seed(seed)
    finetune(
        model,
        head,
        images,
        labels,
        steps=cfg.steps,
        batch=cfg.batch,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        trainable=TRAINABLE[cfg.trainable],
        seed=seed,
        progress=progress,
        description=description,
        anchor=anchor,
    )


def _finetune_task(cfg_json: str, base_file: str, home: str, task: str, progress: bool) -> float:
    """Worker: fine-tune the base on one task against its stored head; returns seconds."""
    cfg = ZooConfig.model_validate_json(cfg_json)
    model = load_base(base_file).train()
    head = PrototypeHead(load_file(Path(home) / "heads.safetensors")[task], cfg.head_scale)
    with np.load(Path(home) / "data" / f"{task}.npz") as z:
        images, labels = z["train_x"], z["train_y"]
    t0 = time.perf_counter()
    anchor = load_anchor(cfg, Path(home), task)
    train_expert(
        cfg,
        model,
        head,
        images,
        labels,
        expert_seed(cfg, task),
        anchor,
        progress=progress,
        description=f"fine-tuning {task}",
    )
    seconds = time.perf_counter() - t0
    out = Path(home) / "finetuned" / f"{task}.safetensors"
    with atomic_output(out) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp)
    return seconds


def missing_finetunes(root: str | Path, cfg: ZooConfig | None = None) -> list[str]:
    """The tasks of ``cfg`` whose fine-tune :func:`build_zoo` under ``root`` would still have to
    train (all of them while the base itself is still to be pretrained); reads no weights."""
    cfg = cfg or ZooConfig()
    base_file = base_path(cfg, Path(root) / "base")
    if not base_file.is_file():
        return list(cfg.tasks)
    home, shipped = zoo_home(root, cfg, base_file)
    if shipped is not None:
        return []
    return [t for t in cfg.tasks if not (home / "finetuned" / f"{t}.safetensors").exists()]


def zoo_home(root: str | Path, cfg: ZooConfig, base_file: Path) -> tuple[Path, Path | None]:
    """Where the zoo of ``cfg`` lives under ``root`` and the shipped experts it gets (or
    ``None``): the directory is keyed by the config, with ``experts`` resolved to ``shipped`` or
    ``trained``, and by the base checkpoint's bytes."""
    shipped = shipped_experts(cfg, base_file)
    resolved = cfg.model_copy(update={"experts": "trained" if shipped is None else "shipped"})
    key = digest(resolved.model_dump_json().encode() + base_file.read_bytes())
    return Path(root) / key, shipped


def _copy_shipped(cfg: ZooConfig, home: Path, shipped: Path) -> None:
    """Copy the shipped heads and experts of ``cfg.tasks`` into ``home`` where missing, each
    checked against the sha256 the shipped ``zoo.json`` records."""
    manifest = json.loads((shipped / "zoo.json").read_text(encoding="utf-8"))
    heads_file = home / "heads.safetensors"
    if not heads_file.exists():
        heads = load_file(_checked(shipped / "heads.safetensors", manifest))
        with atomic_output(heads_file) as tmp:
            save_file({t: heads[t].contiguous() for t in cfg.tasks}, tmp)
    for task in cfg.tasks:
        target = home / "finetuned" / f"{task}.safetensors"
        if not target.exists():
            with atomic_output(target) as tmp:
                shutil.copyfile(_checked(shipped / "finetuned" / target.name, manifest), tmp)


def _checked(file: Path, manifest: dict[str, Any]) -> Path:
    """``file`` after checking its sha256 against the shipped manifest."""
    name = file.relative_to(shipped_zoo_dir()).as_posix()
    expected = manifest["sha256"].get(name)
    actual = hashlib.sha256(file.read_bytes()).hexdigest()
    if actual != expected:
        raise CheckpointError(
            f"the shipped expert file {file} does not match its recorded sha256; reinstall "
            "rmtllmf, or set experts: trained to fine-tune the experts here"
        )
    return file


def build_zoo(
    root: str | Path,
    cfg: ZooConfig | None = None,
    *,
    progress: bool = False,
    workers: int = 1,
) -> TinyVitPool:
    """Build or reuse the zoo under ``root`` (see module docs); ``workers`` processes generate
    data and fine-tune in parallel."""
    cfg = cfg or ZooConfig()
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise InputError(f"unknown tasks {unknown}; the embedded suite has {', '.join(TASK_NAMES)}")
    base_file = resolve_base(cfg, Path(root) / "base", progress=progress)
    base = load_base(base_file)
    home, shipped = zoo_home(root, cfg, base_file)
    (home / "data").mkdir(parents=True, exist_ok=True)
    (home / "finetuned").mkdir(exist_ok=True)
    if shipped is not None:
        _copy_shipped(cfg, home, shipped)
    record_file = home / "zoo.json"
    record = (
        PoolRecord.load(record_file)
        if record_file.exists()
        else PoolRecord(config=cfg.model_dump(), base_file=str(base_file))
    )

    ft_files = {t: home / "finetuned" / f"{t}.safetensors" for t in cfg.tasks}
    train = not all(f.exists() for f in ft_files.values())
    data = _build_data(cfg, home, workers, progress, anchor=train)
    heads = _build_heads(cfg, home, base, data, anchor=train)
    jobs = [
        (cfg.model_dump_json(), str(base_file), str(home), t, progress and workers == 1)
        for t, f in ft_files.items()
        if not f.exists()
    ]
    for task, seconds in zip(
        [j[3] for j in jobs],
        in_workers(_finetune_task, jobs, workers, progress, "fine-tuning"),
        strict=True,
    ):
        record.seconds[task] = seconds
        record.finetuned.pop(task, None)
    zoo = TinyVitPool(home, cfg, base, heads, data, record=record)
    for task in cfg.tasks:
        zoo.finetuned[task] = load_file(ft_files[task])
        measure_task(zoo, task)
        record.save(record_file)
    return zoo


def _build_data(
    cfg: ZooConfig, home: Path, workers: int, progress: bool, *, anchor: bool
) -> dict[str, dict[str, Split]]:
    """Every task's splits (and, with ``anchor``, the anchor images), generated where missing,
    then loaded."""
    data_files = {t: home / "data" / f"{t}.npz" for t in cfg.tasks}
    pending = [(cfg.model_dump_json(), t, str(f)) for t, f in data_files.items() if not f.exists()]
    anchor_file = home / "data" / "anchor.npz"
    if anchor and cfg.anchor_weight > 0 and not anchor_file.exists():
        pending.append((cfg.model_dump_json(), "", str(anchor_file)))
    in_workers(write_task_or_anchor, pending, workers, progress, "generating data")
    data: dict[str, dict[str, Split]] = {}
    for task, file in data_files.items():
        with np.load(file) as z:
            data[task] = {s: (z[f"{s}_x"], z[f"{s}_y"]) for s in ("train", "val", "test", "head")}
    return data


def _build_heads(
    cfg: ZooConfig,
    home: Path,
    base: TinyVit,
    data: dict[str, dict[str, Split]],
    *,
    anchor: bool,
) -> dict[str, PrototypeHead]:
    """The fixed heads from the base's embeddings of each head split (fitted where missing),
    and, with ``anchor``, the anchor's targets, the base's embeddings of the anchor images."""
    heads_file = home / "heads.safetensors"
    stored = load_file(heads_file) if heads_file.exists() else {}
    heads = {}
    for task in cfg.tasks:
        if task not in stored:
            n_classes = len(TASKS[task][1])
            if cfg.head_fit == "probe":
                head = probe_head(base, *data[task]["head"], n_classes, scale=cfg.head_scale)
            else:
                head = prototype_head(base, *data[task]["head"], n_classes)
            stored[task] = head.weight
        heads[task] = PrototypeHead(stored[task], cfg.head_scale)
    with atomic_output(heads_file) as tmp:
        save_file({k: v.contiguous() for k, v in stored.items()}, tmp)
    if anchor:
        ensure_anchor(cfg, home, base)
    return heads


def ensure_anchor(cfg: ZooConfig, home: Path, base: TinyVit) -> None:
    """The anchor's images and targets (the base's embeddings of them) under ``home``, made
    where missing (nothing for plain fine-tuning)."""
    if cfg.anchor_weight == 0:
        return
    images_file = home / "data" / "anchor.npz"
    if not images_file.exists():
        write_task_or_anchor(cfg.model_dump_json(), "", str(images_file))
    targets_file = home / "anchor.safetensors"
    if not targets_file.exists():
        with np.load(images_file) as z:
            anchor = Anchor.from_base(base, z["images"], cfg.anchor_weight, cfg.anchor_batch)
        with atomic_output(targets_file) as tmp:
            save_file({"targets": anchor.targets.contiguous()}, tmp)


__all__ = [
    "TinyVitPool",
    "ZooConfig",
    "build_zoo",
    "load_base",
    "missing_finetunes",
    "resolve_base",
    "shipped_base_path",
]
