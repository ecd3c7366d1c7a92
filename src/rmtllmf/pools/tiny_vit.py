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

Finished pieces are never recomputed; an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

from rmtllmf._io import atomic_output
from rmtllmf._progress import progress_bar
from rmtllmf.data.synthetic import TASK_NAMES, TASKS, make_task, pretext
from rmtllmf.errors import InputError
from rmtllmf.fusion.checkpoint import load_state_dict
from rmtllmf.models.tiny_vit import (
    EMBEDDING_PARAMS,
    PrototypeHead,
    TinyVit,
    TinyVitConfig,
    normalise_images,
)
from rmtllmf.pools.base import PoolRecord, Split
from rmtllmf.training.loops import (
    Anchor,
    accuracy,
    finetune,
    probe_head,
    prototype_head,
)
from rmtllmf.training.pretrain import PretrainConfig, pretrain_tiny_base

_T = TypeVar("_T")


def shipped_base_path() -> Path:
    """The tiny base checkpoint shipped inside the package."""
    return Path(str(resources.files("rmtllmf.models") / "assets" / "tiny_vit_base.safetensors"))


class ZooConfig(BaseModel):
    """How the zoo is built (frozen); part of the cache key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: tuple[str, ...] = TASK_NAMES
    n_train: int = Field(20000, ge=10)
    n_val: int = Field(300, ge=10)
    n_test: int = Field(500, ge=10)
    head_per_class: int = Field(100, ge=1, description="labelled examples per class for heads")
    head_fit: Literal["prototype", "probe"] = Field(
        "probe",
        description="fixed heads from the base's embeddings of the head split: class means "
        "(prototype) or a cosine linear probe fitted on them (probe, the LP of LP-FT)",
    )
    head_scale: float = Field(
        30.0, gt=0, description="logit scale of the prototype heads (fine-tuning temperature)"
    )
    steps: int = Field(800, ge=1, description="fine-tuning steps per task")
    batch: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    anchor_weight: float = Field(
        10.0,
        ge=0,
        description="beta of the function-space anchor on the public anchor images (0: plain "
        "fine-tuning, the protocol of the paper's CLIP checkpoints)",
    )
    anchor_images: int = Field(3000, ge=1, description="pretext images in the anchor set")
    anchor_domain_images: int = Field(
        1000,
        ge=0,
        description="unlabelled public images of each task's domain added to the anchor set; a "
        "user anchors on those of the other tasks' domains, never its own (0: pretext only)",
    )
    anchor_batch: int = Field(16, ge=1, description="anchor images per fine-tuning step")
    trainable: Literal["all", "blocks", "attention", "mlp"] = Field(
        "all",
        description="fine-tune every parameter, only the transformer blocks, only their "
        "attention projections or only their MLPs",
    )
    seed: int = 0
    base: str | None = Field(
        None, description="base checkpoint; None = the shipped one, else pretrain and cache one"
    )
    pretrain: PretrainConfig = PretrainConfig()


TRAINABLE: dict[str, Callable[[str], bool] | None] = {
    "all": None,
    "blocks": lambda n: n.startswith("encoder.layers."),
    "attention": lambda n: n.startswith("encoder.layers.") and ".self_attn." in n,
    "mlp": lambda n: n.startswith("encoder.layers.") and ".mlp." in n,
}
"""Which parameters a zoo fine-tune trains (``ZooConfig.trainable``)."""


def load_base(path: str | Path | None = None) -> TinyVit:
    """The tiny base model (architecture read from the checkpoint's metadata)."""
    file = Path(path) if path is not None else shipped_base_path()
    if not file.exists():
        raise InputError(
            f"tiny base checkpoint {file} not found; run scripts/pretrain_tiny_base.py to make it"
        )
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("rmtllmf", "{}"))
    model = TinyVit(TinyVitConfig(**meta.get("config", {})))
    model.load_state_dict(load_state_dict(file))
    return model.eval()


def resolve_base(cfg: ZooConfig, cache: Path, *, progress: bool = False) -> Path:
    """The base checkpoint: ``cfg.base``, else the shipped one, else one pretrained with
    ``cfg.pretrain`` into ``cache`` (once; reused afterwards)."""
    if cfg.base:
        return Path(cfg.base)
    if shipped_base_path().exists():
        return shipped_base_path()
    path = cache / f"tiny_vit_base-{_digest(cfg.pretrain.model_dump_json().encode())}.safetensors"
    if not path.exists():
        if progress:
            print(
                f"no tiny base is shipped: pretraining one into {path} (cached; on one CPU core "
                "the default took 27 minutes here)",
                flush=True,
            )
        pretrain_tiny_base(path, cfg.pretrain, progress=progress)
    return path


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


@dataclass
class Zoo:
    """A built zoo: data, heads, base and fine-tuned state dicts, and the measured accuracies."""

    root: Path
    config: ZooConfig
    base: TinyVit
    heads: dict[str, PrototypeHead]
    data: dict[str, dict[str, Split]]
    finetuned: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    record: PoolRecord = field(default_factory=lambda: PoolRecord(config={}))

    @property
    def base_state(self) -> dict[str, torch.Tensor]:
        """A copy of the base model's parameters."""
        return {k: v.detach().clone() for k, v in self.base.state_dict().items()}

    def model_from_state(self, state: Mapping[str, torch.Tensor]) -> TinyVit:
        """A model of the base's architecture with ``state`` loaded."""
        model = TinyVit(self.base.config)
        model.load_state_dict(dict(state))
        return model.eval()

    def task_accuracy(
        self, state: Mapping[str, torch.Tensor], tasks: Sequence[str], split: str = "test"
    ) -> dict[str, float]:
        """Accuracy of the model ``state`` on each task's split, with that task's head."""
        model = self.model_from_state(state)
        return {t: accuracy(model, self.heads[t], *self.data[t][split]) for t in tasks}

    def finetuned_accuracy(self, task: str, split: str = "test") -> float:
        """The task's own fine-tuned accuracy (the normaliser of normalized accuracy)."""
        return self.record.accuracy("finetuned", task, split)

    def base_accuracy(self, task: str, split: str = "test") -> float:
        """The base model's accuracy on the task (with the task's head)."""
        return self.record.accuracy("base", task, split)

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
        but those of its own domain (``None``: plain fine-tuning; ``task=None``: the whole set)."""
        return _load_anchor(self.config, self.root, task)

    def n_classes(self, task: str) -> int:
        """Number of classes of ``task``."""
        return len(TASKS[task][1])


def _make_data(cfg: ZooConfig, task: str) -> dict[str, Split]:
    n_classes = len(TASKS[task][1])
    sizes = {
        "train": cfg.n_train,
        "val": cfg.n_val,
        "test": cfg.n_test,
        "head": cfg.head_per_class * n_classes * 3,
    }
    data = {s: make_task(task, s, n, cfg.seed) for s, n in sizes.items()}
    hx, hy = data["head"]  # keep exactly head_per_class examples of each class
    keep = np.concatenate([np.flatnonzero(hy == c)[: cfg.head_per_class] for c in range(n_classes)])
    data["head"] = (hx[keep], hy[keep])
    return data


def _write_data(cfg_json: str, task: str, file: str) -> None:
    """Worker: generate and store one task's splits (written atomically)."""
    splits = _make_data(ZooConfig.model_validate_json(cfg_json), task)
    arrays: dict[str, Any] = {}
    for s_name, (x, y) in splits.items():
        arrays[f"{s_name}_x"], arrays[f"{s_name}_y"] = x, y
    with atomic_output(file, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


ANCHOR_STREAM = 200
"""``default_rng([seed, ANCHOR_STREAM])`` draws the anchor images: the pretext distribution the
base was pretrained on (streams 100 and 101), images it has not seen."""


def _write_anchor(cfg_json: str, file: str) -> None:
    """Worker: generate and store the anchor's images (written atomically): pretext images, then
    ``anchor_domain_images`` public images of each task's domain; ``domain`` holds each image's
    task index (-1 for pretext)."""
    cfg = ZooConfig.model_validate_json(cfg_json)
    images, _ = pretext(np.random.default_rng([cfg.seed, ANCHOR_STREAM]), cfg.anchor_images)
    parts, domain = [images], [np.full(len(images), -1)]
    if cfg.anchor_domain_images:
        for i, task in enumerate(cfg.tasks):
            public, _ = make_task(task, "public", cfg.anchor_domain_images, cfg.seed)
            parts.append(public)
            domain.append(np.full(len(public), i))
    with atomic_output(file, suffix=".npz") as tmp:
        np.savez(tmp, images=np.concatenate(parts), domain=np.concatenate(domain))


def _load_anchor(cfg: ZooConfig, home: Path, task: str | None = None) -> Anchor | None:
    """The anchor of ``task``'s fine-tune: every anchor image but those of its own domain
    (``None`` for plain fine-tuning; ``task=None``: the whole set)."""
    if cfg.anchor_weight == 0:
        return None
    with np.load(home / "data" / "anchor.npz") as z:
        images = z["images"]
        domain = z["domain"]
    targets = load_file(home / "anchor.safetensors")["targets"]
    if task is not None:
        keep = domain != cfg.tasks.index(task)
        images, targets = images[keep], targets[torch.from_numpy(keep)]
    return Anchor(images, targets, cfg.anchor_weight, cfg.anchor_batch)


def _write_task_or_anchor(cfg_json: str, task: str, file: str) -> None:
    """Worker: one task's splits, or the anchor images when ``task`` is empty."""
    if task:
        _write_data(cfg_json, task, file)
    else:
        _write_anchor(cfg_json, file)


def _finetune_task(
    cfg_json: str, base_file: str, home: str, task: str, index: int, progress: bool
) -> float:
    """Worker: fine-tune the base on one task against its stored head; returns seconds."""
    cfg = ZooConfig.model_validate_json(cfg_json)
    model = load_base(base_file).train()
    head = PrototypeHead(load_file(Path(home) / "heads.safetensors")[task], cfg.head_scale)
    with np.load(Path(home) / "data" / f"{task}.npz") as z:
        images, labels = z["train_x"], z["train_y"]
    seed = cfg.seed * 1000 + index
    torch.manual_seed(seed)
    t0 = time.perf_counter()
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
        description=f"fine-tuning {task}",
        anchor=_load_anchor(cfg, Path(home), task),
    )
    seconds = time.perf_counter() - t0
    out = Path(home) / "finetuned" / f"{task}.safetensors"
    with atomic_output(out) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp)
    return seconds


def _one_thread() -> None:
    torch.set_num_threads(1)


def _in_workers(
    fn: Callable[..., _T], jobs: Sequence[tuple[Any, ...]], workers: int, progress: bool, what: str
) -> list[_T]:
    """``fn(*job)`` for every job: in this process when ``workers == 1``, else in ``workers``
    single-threaded processes (on small models, two 1-thread processes beat one 2-thread one
    on these shared cores)."""
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


def build_zoo(
    root: str | Path,
    cfg: ZooConfig | None = None,
    *,
    progress: bool = False,
    workers: int = 1,
) -> Zoo:
    """Build or reuse the zoo under ``root`` (see module docs); ``workers`` processes generate
    data and fine-tune in parallel."""
    cfg = cfg or ZooConfig()
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise InputError(f"unknown tasks {unknown}; the embedded suite has {', '.join(TASK_NAMES)}")
    base_file = resolve_base(cfg, Path(root) / "base", progress=progress)
    base = load_base(base_file)
    key = _digest(cfg.model_dump_json().encode() + base_file.read_bytes())
    home = Path(root) / key
    (home / "data").mkdir(parents=True, exist_ok=True)
    (home / "finetuned").mkdir(exist_ok=True)
    record_file = home / "zoo.json"
    record = (
        PoolRecord.load(record_file)
        if record_file.exists()
        else PoolRecord(config=cfg.model_dump(), base_file=str(base_file))
    )

    data = _build_data(cfg, home, workers, progress)
    heads = _build_heads(cfg, home, base, data)
    ft_files = {t: home / "finetuned" / f"{t}.safetensors" for t in cfg.tasks}
    jobs = [
        (cfg.model_dump_json(), str(base_file), str(home), t, i, progress and workers == 1)
        for i, (t, f) in enumerate(ft_files.items())
        if not f.exists()
    ]
    for task, seconds in zip(
        [j[3] for j in jobs],
        _in_workers(_finetune_task, jobs, workers, progress, "fine-tuning"),
        strict=True,
    ):
        record.seconds[task] = seconds
        record.finetuned.pop(task, None)
    zoo = Zoo(home, cfg, base, heads, data, record=record)
    for task in cfg.tasks:
        zoo.finetuned[task] = load_file(ft_files[task])
        _measure(zoo, task)
        record.save(record_file)
    return zoo


def _build_data(
    cfg: ZooConfig, home: Path, workers: int, progress: bool
) -> dict[str, dict[str, Split]]:
    """Every task's splits (and the anchor images), generated where missing, then loaded."""
    data_files = {t: home / "data" / f"{t}.npz" for t in cfg.tasks}
    pending = [(cfg.model_dump_json(), t, str(f)) for t, f in data_files.items() if not f.exists()]
    anchor_file = home / "data" / "anchor.npz"
    if cfg.anchor_weight > 0 and not anchor_file.exists():
        pending.append((cfg.model_dump_json(), "", str(anchor_file)))
    _in_workers(_write_task_or_anchor, pending, workers, progress, "generating data")
    data: dict[str, dict[str, Split]] = {}
    for task, file in data_files.items():
        with np.load(file) as z:
            data[task] = {s: (z[f"{s}_x"], z[f"{s}_y"]) for s in ("train", "val", "test", "head")}
    return data


def _build_heads(
    cfg: ZooConfig, home: Path, base: TinyVit, data: dict[str, dict[str, Split]]
) -> dict[str, PrototypeHead]:
    """The fixed heads from the base's embeddings of each head split (fitted where missing),
    and the anchor's targets, the base's embeddings of the anchor images."""
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
    targets_file = home / "anchor.safetensors"
    if cfg.anchor_weight > 0 and not targets_file.exists():
        with np.load(home / "data" / "anchor.npz") as z:
            anchor = Anchor.from_base(base, z["images"], cfg.anchor_weight, cfg.anchor_batch)
        with atomic_output(targets_file) as tmp:
            save_file({"targets": anchor.targets.contiguous()}, tmp)
    return heads


def _measure(zoo: Zoo, task: str) -> None:
    """Record the base's and the fine-tuned model's validation and test accuracy on ``task``
    (once: the record keeps them)."""
    data, head, record = zoo.data[task], zoo.heads[task], zoo.record
    if task not in record.base:
        record.base[task] = {s: accuracy(zoo.base, head, *data[s]) for s in ("val", "test")}
    if task not in record.finetuned:
        model = zoo.model_from_state(zoo.finetuned[task])
        record.finetuned[task] = {s: accuracy(model, head, *data[s]) for s in ("val", "test")}
