"""``hf-clip`` as a model pool: the paper's real setting behind
:class:`rmtllmf.pools.base.ModelPool`.

* Base: a Hugging Face ``CLIPModel`` (hub id or directory). Fine-tuned models: any CLIP
  checkpoint flavour (directory, safetensors file, hub id such as FusionBench's
  ``tanganke/clip-vit-base-patch16_mnist``); only the vision tower enters task vectors.
* The model the channel, the merge and the defense see is :class:`ClipVisionEncoder`: the
  vision tower's own modules with the canonical keys of
  :func:`rmtllmf.models.hf_clip.vision_state`, returning the pooled (post-layernorm class
  token) output. The visual projection and the zero-shot text head form the fixed task head
  (:class:`ProjectedHead`), built from the *base* model, so heads never travel.
* Data: Hugging Face datasets (hub id or ``save_to_disk`` directory), validation carved from
  train (10%, seeded) when absent; ``n_*`` limits take the first examples of a split.
* Fine-tuned and base accuracies (the normalisers) are measured once and cached as JSON under
  ``cache_dir`` keyed by the config.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from rmtllmf.data.real import load_hf_dataset
from rmtllmf.errors import CheckpointError, InputError, hub_unavailable
from rmtllmf.models.hf_clip import DEFAULT_TEMPLATES, EMBEDDING_PARAMS, HfClip, vision_state
from rmtllmf.pools.base import PoolRecord, RecordedAccuracies, Split


class ClipTaskSpec(BaseModel):
    """One task: its fine-tuned checkpoint and dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    finetuned: str
    dataset: str
    dataset_config: str | None = None
    test_split: str = "test"
    image_key: str = "image"
    label_key: str = "label"
    classnames: tuple[str, ...] | None = Field(
        None, description="class names for the zero-shot head; default: the dataset's"
    )


class ClipPoolConfig(BaseModel):
    """The hf-clip pool (frozen)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    base: str = "openai/clip-vit-base-patch16"
    tasks: dict[str, ClipTaskSpec]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    offline: bool = True
    n_train: int | None = Field(2000, ge=1, description="training examples kept (few-shot pool)")
    n_val: int | None = Field(500, ge=1)
    n_test: int | None = Field(None, ge=1, description="None = the whole test split")
    batch: int = Field(128, ge=1)
    device: str = Field("auto", description="'auto' (cuda when available), 'cpu', 'cuda', ...")


def fetch_checkpoint(name: str, *, offline: bool) -> Path:
    """A local path for a checkpoint: the path itself, or the hub snapshot of ``name``."""
    path = Path(name)
    if path.exists():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                repo_id=name,
                local_files_only=offline,
                allow_patterns=["*.safetensors", "*.json", "*.txt"],
            )
        )
    except Exception as exc:  # the hub raises many types; all mean "not available"
        raise CheckpointError(hub_unavailable("checkpoint", name, exc, offline=offline)) from exc


class ClipVisionEncoder(nn.Module):
    """CLIP's vision tower with canonical keys; ``forward`` returns the pooled output."""

    def __init__(self, vision_model: Any) -> None:
        super().__init__()
        self.embeddings: nn.Module = vision_model.embeddings
        self.pre_layrnorm: nn.Module = vision_model.pre_layrnorm
        self.encoder: nn.Module = vision_model.encoder
        self.post_layernorm: nn.Module = vision_model.post_layernorm

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.pre_layrnorm(self.embeddings(pixel_values))
        out = self.encoder(inputs_embeds=hidden)
        last = out[0] if isinstance(out, tuple) else out.last_hidden_state
        pooled: torch.Tensor = self.post_layernorm(last[:, 0, :])
        return pooled


class ProjectedHead(nn.Module):
    """Fixed task head: visual projection, then the zero-shot prototype head."""

    def __init__(self, projection: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.projection = projection
        self.head = head
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.projection(pooled))
        return out


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class ClipPool(RecordedAccuracies):
    """The paper's CLIP setting as a :class:`~rmtllmf.pools.base.ModelPool` (see module docs)."""

    def __init__(self, cfg: ClipPoolConfig, cache_dir: str | Path | None = None) -> None:
        if not cfg.tasks:
            raise InputError("the hf-clip pool needs at least one task")
        self.config = cfg
        self.device = _device(cfg.device)
        self.clip = HfClip.from_pretrained(
            fetch_checkpoint(cfg.base, offline=cfg.offline), offline=True
        )
        self.clip.model.to(self.device)
        size = self.clip.image_size
        self._base = {k: v.detach().cpu() for k, v in self._encoder().state_dict().items()}
        self.finetuned: dict[str, dict[str, torch.Tensor]] = {}
        self.data: dict[str, dict[str, Split]] = {}
        self.heads: dict[str, nn.Module] = {}
        self._classes: dict[str, int] = {}
        for task, spec in cfg.tasks.items():
            state = vision_state(fetch_checkpoint(spec.finetuned, offline=cfg.offline))
            missing = sorted(set(self._base) - set(state))
            if missing:
                raise CheckpointError(
                    f"fine-tuned checkpoint {spec.finetuned} for {task} lacks {missing[:5]}; "
                    "is it a CLIP of the base's architecture?"
                )
            self.finetuned[task] = {k: state[k] for k in self._base}
            kw: dict[str, Any] = {
                "config": spec.dataset_config,
                "offline": cfg.offline,
                "image_key": spec.image_key,
                "label_key": spec.label_key,
            }
            splits = {
                "train": load_hf_dataset(spec.dataset, "train", size, limit=cfg.n_train, **kw),
                "val": load_hf_dataset(spec.dataset, "validation", size, limit=cfg.n_val, **kw),
                "test": load_hf_dataset(
                    spec.dataset, spec.test_split, size, limit=cfg.n_test, **kw
                ),
            }
            names = spec.classnames or splits["test"].classnames
            for split in splits.values():
                if len(split.labels) and int(split.labels.max()) >= len(names):
                    raise InputError(
                        f"task {task}: labels reach {int(split.labels.max())} but there are "
                        f"{len(names)} class names; fix classnames in the config"
                    )
            self.data[task] = {s: (v.images, v.labels) for s, v in splits.items()}
            self._classes[task] = len(names)
            zero_shot = self.clip.zero_shot_head(names, cfg.templates)
            projection = copy.deepcopy(self.clip.model.visual_projection)
            self.heads[task] = ProjectedHead(projection, zero_shot).to(self.device)
        self.record = self._accuracies(cache_dir)

    # ModelPool -------------------------------------------------------------------------------
    @property
    def base_state(self) -> dict[str, torch.Tensor]:
        """A copy of the base vision tower (canonical keys)."""
        return {k: v.clone() for k, v in self._base.items()}

    @property
    def embedding_names(self) -> tuple[str, ...]:
        """Patch, class and position embeddings of the vision tower."""
        return EMBEDDING_PARAMS

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images to CLIP-normalised pixels on the pool's device."""
        return self.clip.preprocess(images).to(self.device)

    def n_classes(self, task: str) -> int:
        """Number of classes of ``task``."""
        return self._classes[task]

    def _encoder(self) -> ClipVisionEncoder:
        return ClipVisionEncoder(self.clip.model.vision_model)

    def model_from_state(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        """A fresh vision encoder with ``state`` loaded (strict), on the pool's device."""
        model = ClipVisionEncoder(copy.deepcopy(self.clip.model.vision_model))
        model.load_state_dict({k: v.to(self.device) for k, v in state.items()})
        return model.eval()

    @torch.inference_mode()
    def _accuracy(self, model: nn.Module, task: str, split: str) -> float:
        images, labels = self.data[task][split]
        if len(labels) == 0:
            return float("nan")
        correct = 0
        for i in range(0, len(images), self.config.batch):
            x = self.preprocess(torch.from_numpy(images[i : i + self.config.batch]))
            pred = self.heads[task](model(x)).argmax(-1).cpu().numpy()
            correct += int((pred == labels[i : i + self.config.batch]).sum())
        return correct / len(labels)

    def task_accuracy(
        self, state: Mapping[str, torch.Tensor], tasks: Sequence[str], split: str = "test"
    ) -> dict[str, float]:
        """Accuracy of ``state`` on each task's split with that task's head."""
        model = self.model_from_state(state)
        return {t: self._accuracy(model, t, split) for t in tasks}

    @property
    def pool_id(self) -> str:
        """Identity of this pool in result databases (hash of its config)."""
        return "hf-clip-" + hashlib.sha256(self.config.model_dump_json().encode()).hexdigest()[:12]

    def _accuracies(self, cache_dir: str | Path | None) -> PoolRecord:
        file = Path(cache_dir) / f"{self.pool_id}.json" if cache_dir is not None else None
        if file is not None and file.exists():
            return PoolRecord.load(file)
        record = PoolRecord(config=self.config.model_dump())
        base_model = self.model_from_state(self._base)
        for task in self.config.tasks:
            ft_model = self.model_from_state(self.finetuned[task])
            record.base[task] = {s: self._accuracy(base_model, task, s) for s in ("val", "test")}
            record.finetuned[task] = {s: self._accuracy(ft_model, task, s) for s in ("val", "test")}
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            record.save(file)
        return record
