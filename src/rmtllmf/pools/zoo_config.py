"""The embedded zoo's configuration, its base checkpoint (shipped, given, or pretrained) and
its experts (shipped, or trained).

The package ships the eight experts and heads of the default zoo
(``models/assets/tiny_vit_zoo/``, rebuilt by ``scripts/build_shipped_zoo.py``): every machine
then starts the study from the same models, and the first run skips the fine-tuning. Which
experts a config gets (``ZooConfig.experts``, :func:`shipped_experts`):

* ``auto`` (default): the shipped ones when the config trains exactly as they were trained
  (the shipped base, every setting but ``tasks`` equal, its tasks among the shipped eight),
  else trained here;
* ``shipped``: the shipped ones, or an error naming the settings that differ;
* ``trained``: trained here (what the shipped ones were built with).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from safetensors import safe_open

from rmtllmf.data.synthetic import TASK_NAMES
from rmtllmf.errors import CheckpointError, InputError
from rmtllmf.fusion.checkpoint import load_state_dict
from rmtllmf.models.tiny_vit import TinyVit, TinyVitConfig
from rmtllmf.training.pretrain import PretrainConfig, pretrain_tiny_base


def shipped_base_path() -> Path:
    """The tiny base checkpoint shipped inside the package."""
    return Path(str(resources.files("rmtllmf.models") / "assets" / "tiny_vit_base.safetensors"))


class ZooConfig(BaseModel):
    """How the zoo is built (frozen); part of the cache key."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    tasks: tuple[str, ...] = Field(TASK_NAMES, min_length=1)
    n_train: int = Field(
        20000, ge=10, le=500_000, description="at most 500,000 (1.5 GB of 32x32 images)"
    )
    n_val: int = Field(300, ge=10, le=100_000)
    n_test: int = Field(500, ge=10, le=100_000)
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
    batch: int = Field(64, ge=1, le=4096)
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
    experts: Literal["auto", "shipped", "trained"] = Field(
        "auto",
        description="the experts: the package's (shipped), fine-tuned here (trained), or the "
        "package's when this config trains as they were trained (auto)",
    )

    @field_validator("tasks")
    @classmethod
    def _each_task_once(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [t for t in tasks if t not in TASK_NAMES]
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} not in the embedded suite; choose from "
                f"{', '.join(TASK_NAMES)}"
            )
        repeated = sorted({t for t in tasks if tasks.count(t) > 1})
        if repeated:
            raise ValueError(f"names {', '.join(repeated)} more than once; give each task once")
        return tasks


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
    state = load_state_dict(file)  # a corrupt or pickled file is a CheckpointError here
    with safe_open(str(file), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("rmtllmf", "{}"))
    model = TinyVit(TinyVitConfig(**meta.get("config", {})))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or extra or reshaped:
        parts = [
            f"{len(keys)} {what} (e.g. {keys[0]})"
            for what, keys in (
                ("tensors missing", missing),
                ("tensors it does not have", extra),
                ("tensors of other shapes", reshaped),
            )
            if keys
        ]
        raise CheckpointError(
            f"{file} is not a tiny-vit base checkpoint: against the architecture in its "
            f"metadata it has {'; '.join(parts)}; give a base written by "
            "scripts/pretrain_tiny_base.py, or leave --base out for the shipped one"
        )
    model.load_state_dict(state)
    return model.eval()


def resolve_base(cfg: ZooConfig, cache: Path, *, progress: bool = False) -> Path:
    """The base checkpoint: ``cfg.base``, else the shipped one, else one pretrained with
    ``cfg.pretrain`` into ``cache`` (once; reused afterwards)."""
    path = base_path(cfg, cache)
    if not path.exists() and not cfg.base:
        if progress:
            print(
                f"no tiny base is shipped: pretraining one into {path} (cached; on one CPU core "
                "the default took 27 minutes here)",
                flush=True,
            )
        pretrain_tiny_base(path, cfg.pretrain, progress=progress)
    return path


def base_path(cfg: ZooConfig, cache: Path) -> Path:
    """Where :func:`resolve_base` finds the base of ``cfg`` (it need not exist yet)."""
    if cfg.base:
        return Path(cfg.base)
    if shipped_base_path().exists():
        return shipped_base_path()
    return cache / f"tiny_vit_base-{digest(cfg.pretrain.model_dump_json().encode())}.safetensors"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def shipped_zoo_dir() -> Path:
    """The shipped experts: ``heads.safetensors``, ``finetuned/<task>.safetensors`` and
    ``zoo.json`` (the config they were trained with, their accuracies, sha256 of each file and
    the machine that built them)."""
    return Path(str(resources.files("rmtllmf.models") / "assets" / "tiny_vit_zoo"))


def shipped_manifest() -> dict[str, Any] | None:
    """The shipped zoo's ``zoo.json`` (``None`` when the package carries no experts)."""
    file = shipped_zoo_dir() / "zoo.json"
    if not file.is_file():
        return None
    manifest: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    return manifest


def _training_settings(cfg: ZooConfig) -> dict[str, Any]:
    """Every setting that shapes an expert but the task list and the choice of experts."""
    return cfg.model_dump(mode="json", exclude={"tasks", "experts"})


def shipped_experts(cfg: ZooConfig, base_file: Path) -> Path | None:
    """The shipped zoo's directory when ``cfg`` gets the shipped experts (module docs), else
    ``None``; an error when ``cfg.experts`` is ``shipped`` and they do not fit."""
    if cfg.experts == "trained":
        return None
    manifest = shipped_manifest()
    reasons = []
    if manifest is None:
        reasons.append("this installation carries no shipped experts")
    else:
        trained = ZooConfig.model_validate(manifest["config"])
        differ = [
            k for k, v in _training_settings(cfg).items() if _training_settings(trained).get(k) != v
        ]
        if differ:
            reasons.append(f"the settings {', '.join(differ)} differ from theirs")
        if base_file.resolve() != shipped_base_path().resolve():
            reasons.append("they were fine-tuned from the shipped base, not from " + str(base_file))
        stray = [t for t in cfg.tasks if t not in trained.tasks]
        if stray:
            reasons.append(f"tasks {stray} are not among them")
    if not reasons:
        return shipped_zoo_dir()
    if cfg.experts == "shipped":
        raise InputError(
            f"experts: shipped, but {'; '.join(reasons)}; use experts: trained or auto "
            "(--experts on the command line) to fine-tune this config's experts here"
        )
    return None
