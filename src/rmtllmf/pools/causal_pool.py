"""``hf-causal`` as a model pool: a Hugging Face causal LM, the embedded text suite, tasks scored
by the log-likelihood of their label words (:mod:`rmtllmf.models.hf_causal`) and one full
fine-tune per task, cached.

No causal LM ships offline, so the config names one (``base``: a local directory or a hub id,
e.g. ``Qwen/Qwen2.5-0.5B``); see ``docs/causal-lm.md``.

``build_causal_pool(root, CausalPoolConfig(base=...))`` makes (or reuses) under ``root/<key>/``
(``key`` hashes the config, the model's weights, config and tokenizer files and the suite's
texts):

* ``data/<task>.npz``: encoded prompts ``(n, 2 + max_length)`` (int32 rows ``[task index,
  length, tokens...]``) and labels of the train / val / test splits of
  :func:`rmtllmf.data.text.text_splits`; ``data/<task>.json``: the texts themselves;
* ``verbalizers.json``: every task's prompt template and its classes' label words and tokens
  (the fixed heads: they select a task's label-word scores and never travel);
* ``finetuned/<task>.safetensors``: full fine-tunes of the LM on the verbalizer cross-entropy
  (tied embedding tables stored once, under the input embedding's key);
* ``pool.json``: the resolved config, the data's sources and versions, base (zero-shot) and
  fine-tuned accuracy per task and split, fine-tuning seconds.

Finished pieces are never recomputed; an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from safetensors.torch import load_file, save_file

from rmtllmf._io import atomic_output, write_text_atomic
from rmtllmf.data.text import (
    TEXT_TASK_NAMES,
    TEXT_TASKS,
    TextSplit,
    source_versions,
    splits_digest,
    suite_splits,
)
from rmtllmf.errors import InputError
from rmtllmf.models.hf_causal import (
    CausalScorer,
    ClassSelector,
    Verbalizers,
    embedding_names,
    encode_prompts,
    load_causal_lm,
    verbalizer_ids,
)
from rmtllmf.models.hf_text import TOKENIZER_FILES, load_tokenizer, resolve_text_model
from rmtllmf.pools.base import PoolRecord, Split, measure_task
from rmtllmf.pools.text_suite_pool import (
    TextSuitePool,
    encoded_splits,
    ids_to_input,
    pool_home,
    run_finetunes,
    stored_record,
)
from rmtllmf.training.loops import embed, finetune

SPLITS = ("train", "val", "test")

#: the prompt of each task of the text suite, ending in the cue the label word follows
DEFAULT_TEMPLATES: dict[str, str] = {
    "noun-gloss": "Definition of a noun: {text}\nCategory:",
    "verb-gloss": "Definition of a verb: {text}\nCategory:",
    "usage": "Sentence: {text}\nTopic:",
    "part-of-speech": "Definition: {text}\nPart of speech:",
    "word-topic": "Word: {text}\nCategory:",
    "name-origin": "Name: {text}\nOrigin:",
    "language-id": "Words: {text}\nLanguage:",
    "word-sentiment": "Word: {text}\nSentiment:",
}
GENERIC_TEMPLATE = "{text}\nCategory:"
NO_BASE = (
    "hf-causal needs base: a local model directory or a Hugging Face hub id of a causal LM "
    "(e.g. base: Qwen/Qwen2.5-0.5B); no causal LM ships with the project, see docs/causal-lm.md"
)


class CausalPoolConfig(BaseModel):
    """How the causal-LM pool is built (frozen); part of the cache key."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    base: str = Field(
        description="causal LM: a local directory or hub id (required: none ships offline)"
    )
    tasks: tuple[str, ...] = TEXT_TASK_NAMES
    template: str | None = Field(
        None,
        description="one prompt for every task, with a {text} placeholder; None: each task's "
        "DEFAULT_TEMPLATES entry",
    )
    templates: dict[str, str] = Field(
        default_factory=dict, description="per-task prompts, over template"
    )
    verbalizers: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="per-task label words, one per class in the suite's class order; default: "
        "the class names",
    )
    verbalizer_prefix: str = Field(" ", description="put before every label word")
    normalize: bool = Field(False, description="mean instead of sum of label-token log-probs")
    max_length: int = Field(48, ge=4, description="prompt tokens per text (text cut, cue kept)")
    train_per_class: int = Field(300, ge=1)
    val_per_class: int = Field(25, ge=1)
    test_per_class: int = Field(50, ge=1)
    steps: int = Field(100, ge=1, description="fine-tuning steps per task")
    batch: int = Field(8, ge=1)
    eval_batch: int = Field(16, ge=1, description="texts per forward pass when measuring")
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    offline: bool = True

    @model_validator(mode="before")
    @classmethod
    def _base_given(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and not data.get("base"):
            raise ValueError(NO_BASE)
        return data

    @field_validator("template")
    @classmethod
    def _has_text(cls, value: str | None) -> str | None:
        if value is not None and "{text}" not in value:
            raise ValueError(f"the template {value!r} has no {{text}} placeholder")
        return value

    def template_of(self, task: str) -> str:
        """The prompt template of ``task``."""
        if task in self.templates:
            return self.templates[task]
        if self.template is not None:
            return self.template
        return DEFAULT_TEMPLATES.get(task, GENERIC_TEMPLATE)

    def words_of(self, task: str) -> tuple[str, ...]:
        """The label words of ``task``'s classes (in the suite's class order)."""
        classes = TEXT_TASKS[task].classes
        words = self.verbalizers.get(task, classes)
        if len(words) != len(classes):
            raise InputError(
                f"verbalizers of {task} give {len(words)} words for its {len(classes)} classes "
                f"({', '.join(classes)}); give one word per class in that order"
            )
        return tuple(words)


@dataclass
class CausalPool(TextSuitePool[CausalScorer]):
    """A built causal-LM pool (see module docs) behind :class:`rmtllmf.pools.base.ModelPool`."""

    family = "hf-causal"
    root: Path
    config: CausalPoolConfig
    base_dir: Path
    base: CausalScorer
    heads: dict[str, ClassSelector]
    data: dict[str, dict[str, Split]]
    texts: dict[str, dict[str, list[str]]]
    finetuned: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    record: PoolRecord = field(default_factory=lambda: PoolRecord(config={}))

    def accuracy(self, model: CausalScorer, task: str, split: str) -> float:
        """Accuracy of ``model`` on a task's split: ``argmax_c s_c(x)`` against the label, the
        texts batched in order of prompt length (``eval_batch`` per forward pass)."""
        rows, labels = self.data[task][split]
        if len(rows) == 0:
            return float("nan")
        order = np.argsort(rows[:, 1], kind="stable")
        scores = embed(model, rows[order], self.config.eval_batch, ids_to_input)
        pred = self.heads[task](scores).argmax(-1).numpy()
        return float(np.mean(pred == labels[order]))

    @property
    def embedding_names(self) -> tuple[str, ...]:
        """Token and learned position embeddings (R-MTLLMF's re-load)."""
        return embedding_names(self.base)

    def preprocess(self, rows: torch.Tensor) -> torch.Tensor:
        """Encoded prompts to the scorer's input."""
        return ids_to_input(rows)


def _model_digest(base_dir: Path) -> str:
    """A hash of the model's weights, config and tokenizer files."""
    h = hashlib.sha256()
    weights = sorted(base_dir.glob("*.safetensors")) or sorted(base_dir.glob("*.bin"))
    names = ("config.json", "tokenizer_config.json", "special_tokens_map.json", *TOKENIZER_FILES)
    for file in [*weights, *(base_dir / n for n in names)]:
        if file.is_file():
            h.update(file.name.encode())
            h.update(file.read_bytes())
    return h.hexdigest()[:12]


def load_scorer(base_dir: Path, verbalizers: Verbalizers, normalize: bool) -> CausalScorer:
    """The causal LM of ``base_dir`` wrapped as a :class:`CausalScorer`."""
    return CausalScorer(load_causal_lm(base_dir), verbalizers, normalize=normalize).eval()


def _read_verbalizers(home: Path, tasks: Sequence[str]) -> Verbalizers:
    stored = json.loads((home / "verbalizers.json").read_text())
    return tuple(tuple(tuple(v) for v in stored[t]["tokens"]) for t in tasks)


def _finetune_task(cfg_json: str, base_dir: str, home: str, task: str, index: int) -> float:
    """Worker: fine-tune the base LM on one task's verbalizer cross-entropy; returns seconds."""
    cfg = CausalPoolConfig.model_validate_json(cfg_json)
    model = load_scorer(
        Path(base_dir), _read_verbalizers(Path(home), cfg.tasks), cfg.normalize
    ).train()
    head = ClassSelector(len(TEXT_TASKS[task].classes))
    with np.load(Path(home) / "data" / f"{task}.npz") as z:
        rows, labels = z["train_x"], z["train_y"]
    seed = cfg.seed * 1000 + index
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    finetune(
        model,
        head,
        rows,
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
    out = Path(home) / "finetuned" / f"{task}.safetensors"
    with atomic_output(out) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp)
    return seconds


def _texts(cfg: CausalPoolConfig) -> dict[str, dict[str, TextSplit]]:
    stray = sorted((set(cfg.templates) | set(cfg.verbalizers)) - set(cfg.tasks))
    texts = suite_splits(
        cfg.tasks,
        n_train=cfg.train_per_class,
        n_val=cfg.val_per_class,
        n_test=cfg.test_per_class,
        n_head=0,
        seed=cfg.seed,
    )
    if stray:
        raise InputError(f"templates / verbalizers name tasks {stray} that are not in tasks")
    return texts


def build_causal_pool(
    root: str | Path,
    cfg: CausalPoolConfig,
    *,
    progress: bool = False,
    workers: int = 1,
) -> CausalPool:
    """Build or reuse the causal-LM pool under ``root`` (see module docs); ``workers``
    processes fine-tune in parallel (each holds the model and its optimizer state)."""
    texts = _texts(cfg)
    base_dir = resolve_text_model(cfg.base, offline=cfg.offline)
    tokenizer = load_tokenizer(base_dir)
    key_source = cfg.model_dump_json() + _model_digest(base_dir) + splits_digest(texts)
    home = pool_home(root, key_source, "finetuned")
    labels = _write_verbalizers(cfg, home, tokenizer)
    base = load_scorer(base_dir, _read_verbalizers(home, cfg.tasks), cfg.normalize)
    data = encoded_splits(
        cfg.tasks,
        home,
        texts,
        SPLITS,
        lambda task, index, words: encode_prompts(
            tokenizer, words, cfg.template_of(task), cfg.max_length, index
        ),
    )
    config = {
        **cfg.model_dump(),
        "sources": source_versions(cfg.tasks),
        "data": splits_digest(texts),
        "verbalizers": labels,
    }
    record = stored_record(home, config, base_dir)
    heads = {t: ClassSelector(len(TEXT_TASKS[t].classes)) for t in cfg.tasks}
    ft_files = run_finetunes(
        _finetune_task,
        cfg.model_dump_json(),
        base_dir,
        home,
        cfg.tasks,
        record,
        workers=workers,
        progress=progress,
        what=f"causal-LM experts ({cfg.steps} steps each)",
    )
    split_texts = {t: {s: texts[t][s][0] for s in SPLITS} for t in cfg.tasks}
    pool = CausalPool(home, cfg, base_dir, base, heads, data, split_texts, record=record)
    for task in cfg.tasks:
        pool.finetuned[task] = load_file(ft_files[task])
        measure_task(pool, task)
        record.save(home / "pool.json")
    return pool


def _write_verbalizers(cfg: CausalPoolConfig, home: Path, tokenizer: Any) -> dict[str, Any]:
    """Every task's template, label words and label tokens (written where missing)."""
    file = home / "verbalizers.json"
    if not file.exists():
        table = {
            t: {
                "template": cfg.template_of(t),
                "words": list(cfg.words_of(t)),
                "tokens": [
                    list(v)
                    for v in verbalizer_ids(
                        tokenizer, cfg.template_of(t), cfg.words_of(t), cfg.verbalizer_prefix
                    )
                ],
            }
            for t in cfg.tasks
        }
        write_text_atomic(file, json.dumps(table, indent=1, ensure_ascii=False))
    stored: dict[str, Any] = json.loads(file.read_text())
    return stored


__all__ = [
    "DEFAULT_TEMPLATES",
    "CausalPool",
    "CausalPoolConfig",
    "build_causal_pool",
    "load_scorer",
]
