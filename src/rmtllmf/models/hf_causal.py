"""``hf-causal``: a Hugging Face causal language model (GPT-2, Llama, Qwen, Mistral shapes through
``AutoModelForCausalLM``) as a classifier by the log-likelihood of label words.

**Scoring.** A task ``t`` has a prompt template ``P_t`` (``"Word: {text}\\nSentiment:"``) and one
verbalizer per class, its label word(s) ``v_c = (v_{c,1}, ..., v_{c,m_c})`` as tokens (the class
name with a leading space, ``" negative"``). The score of class ``c`` for a text ``x`` is the
log-likelihood the LM gives the label words after the prompt,

    s_c(x) = sum_{j=1..m_c} log p_theta(v_{c,j} | P_t(x), v_{c,<j}),

    p_theta(. | u) = softmax(W_out h_theta(u)_{|u|}),

``h_theta(u)_{|u|}`` the last hidden state (after the final norm) at the last token of ``u`` and
``W_out`` the output embedding (``lm_head``); with ``normalize`` the sum becomes the mean over
the ``m_c`` label tokens. The prediction is ``argmax_c s_c(x)``. The scores are the logits the
study's heads return, so the cross-entropy every loop of the project minimises is

    L = -log softmax(s(x))_y = -s_y(x) + log sum_c exp s_c(x),

the standard "classification by verbalizer" fine-tuning loss (PET): it raises the label words of
the right class against the label words of the other classes.

**Interface.** :class:`CausalScorer` holds the LM under its own ``state_dict()`` keys and maps
an encoded batch (:func:`encode_prompts`: one row per text, ``[task index, prompt length,
prompt tokens...]``, so a mixed batch of several tasks can be scored at once, as realignment
does) to a ``(B, C_max)`` score matrix, ``s_c(x)`` in column ``c < C_t`` of a row of task ``t``
and ``-inf`` beyond. The heads are fixed selectors of a task's ``C_t`` columns
(:class:`ClassSelector`): they hold no parameters and never travel.

**Tied embeddings.** GPT-2, Qwen2.5-0.5B and many small LMs share one table between the token
embedding and the output layer (``lm_head.weight is transformer.wte.weight``). The scorer's
``state_dict()`` holds such a table *once*, under the input embedding's key (the alias, e.g.
``lm_head.weight``, is left out, as ``save_pretrained`` does), and ``load_state_dict`` writes
the alias from its source (:func:`tied_aliases`). So a task vector carries the table once, the
channel's noise on it reaches both uses identically, and a merged model stays tied. For a tied
model the embedding re-load of R-MTLLMF therefore restores the output layer too.

**Embedding re-load.** :func:`embedding_names`: the token (and, where the architecture has
one, learned position) embedding tables, every ``nn.Embedding`` of the model (rotary position
encodings hold no parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from rmtllmf.errors import CheckpointError, InputError

#: the columns of an encoded row before the prompt tokens: task index, prompt length
ROW_HEADER = 2

Verbalizers = tuple[tuple[tuple[int, ...], ...], ...]
"""Per task (in the pool's task order), per class, the label-word token ids."""


def load_causal_lm(path: str | Path) -> Any:
    """The ``AutoModelForCausalLM`` of a directory in float32 and eval mode; refuses encoder-decoder
    models and output layers that are not a linear map of the last hidden state."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        config = AutoConfig.from_pretrained(str(path))
        if getattr(config, "is_encoder_decoder", False):
            raise CheckpointError(
                f"{path} holds an encoder-decoder model ({config.model_type}); hf-causal needs a "
                "decoder-only causal LM (GPT-2, Llama, Qwen, Mistral...)"
            )
        model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot load a causal LM from {path}: {exc}") from exc
    model.eval()
    _check_linear_head(model, path)
    return model


def _parts(model: Any) -> tuple[str, str]:
    """The names of the model's backbone and output-layer children."""
    children = dict(model.named_children())
    backbone = getattr(model, "base_model_prefix", "")
    head = model.get_output_embeddings()
    head_name = next((n for n, m in children.items() if m is head), None)
    if backbone not in children or head_name is None:
        raise CheckpointError(
            f"{type(model).__name__} has no backbone child {backbone!r} and output layer "
            f"among its children ({', '.join(children)}); it cannot be scored by label words"
        )
    return backbone, head_name


@torch.no_grad()
def _check_linear_head(model: Any, path: str | Path) -> None:
    """The scorer computes ``W_out h`` only where it needs it: refuse a model whose logits are
    something else (logit soft-capping or scaling inside its forward)."""
    backbone, head = _parts(model)
    probe = torch.arange(min(5, int(model.config.vocab_size))).unsqueeze(0)
    full = model(input_ids=probe, use_cache=False).logits
    hidden = getattr(model, backbone)(input_ids=probe, use_cache=False).last_hidden_state
    mine = getattr(model, head)(hidden)
    if not torch.allclose(full.float(), mine.float(), atol=1e-4, rtol=1e-4):
        raise CheckpointError(
            f"the causal LM in {path} ({type(model).__name__}) computes its logits other than "
            "as its output layer on the last hidden state (soft-capping or scaling); hf-causal "
            "cannot score it"
        )


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: source}`` for every parameter name that is the same tensor as an earlier name
    (``{"lm_head.weight": "transformer.wte.weight"}`` for GPT-2; empty when nothing is tied)."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def _drop_aliases(
    module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """``state_dict`` post-hook: a tied table once, under its source's key."""
    for alias in getattr(module, "tied", {}):
        state.pop(prefix + alias, None)


def _fill_aliases(
    module: nn.Module,
    state: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing: list[str],
    unexpected: list[str],
    errors: list[str],
) -> None:
    """``load_state_dict`` pre-hook: every alias gets its source's tensor (the source wins over
    an alias that a full Hugging Face state might carry)."""
    for alias, source in getattr(module, "tied", {}).items():
        if prefix + source in state:
            state[prefix + alias] = state[prefix + source]


class ClassSelector(nn.Module):
    """A task's fixed head: the first ``n_classes`` columns of the scorer's output (the label-word
    log-likelihoods of that task's classes). No parameters: heads never travel."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return scores[:, : self.n_classes]


class CausalScorer(nn.Module):
    """Encoded prompts ``(B, 2 + L)`` to label-word log-likelihoods ``(B, C_max)`` (module docs).

    The causal LM's top-level modules are this module's children, so ``state_dict()`` has the
    model's own keys (tied aliases left out, see module docs) and ``named_parameters()`` its
    parameters. ``verbalizers[t][c]`` are the label tokens of class ``c`` of task ``t``;
    ``normalize`` divides each class's sum by its number of label tokens.

    One forward runs the LM once on every distinct sequence ``P_t(x) + v_{c,<m_c}`` of the batch
    (classes whose label words share all but the last token share a sequence: with one-token
    verbalizers one sequence per text), right-padded, and evaluates ``W_out`` only at the
    positions that predict a label token.
    """

    def __init__(
        self, model: nn.Module, verbalizers: Verbalizers, *, normalize: bool = False
    ) -> None:
        super().__init__()
        if any(True for _ in model.named_parameters(recurse=False)):
            raise CheckpointError(
                f"{type(model).__name__} holds parameters outside its submodules; "
                "it cannot be wrapped as a causal scorer"
            )
        self.backbone_name, self.head_name = _parts(model)
        for name, child in model.named_children():
            self.add_module(name, child)
        self._call: list[nn.Module] = [model]  # the wrapped model, not a registered child
        self.tied = tied_aliases(model)
        self.verbalizers = check_verbalizers(verbalizers)
        self.normalize = normalize
        self.n_max = max(len(task) for task in self.verbalizers)
        self.register_state_dict_post_hook(_drop_aliases)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_pre_hook(_fill_aliases)  # type: ignore[no-untyped-call]

    @property
    def causal_lm(self) -> nn.Module:
        """The wrapped ``AutoModelForCausalLM`` (sharing this module's parameters)."""
        return self._call[0]

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.long()
        device = next(self.parameters()).device
        tasks = rows[:, 0].tolist()
        lengths = rows[:, 1].tolist()
        prompts = rows[:, ROW_HEADER:].tolist()
        seqs: list[list[int]] = []
        where: dict[tuple[int, tuple[int, ...]], int] = {}
        spots: dict[tuple[int, int], int] = {}
        pick, target, out_row, out_col, weight = [], [], [], [], []
        for i, (t, n) in enumerate(zip(tasks, lengths, strict=True)):
            if not 0 <= t < len(self.verbalizers) or not 1 <= n <= len(prompts[i]):
                raise InputError(
                    f"row {i} has task index {t} and prompt length {n}; encode rows with "
                    "encode_prompts for this scorer's tasks"
                )
            for c, verb in enumerate(self.verbalizers[t]):
                key = (i, verb[:-1])
                if key not in where:
                    where[key] = len(seqs)
                    seqs.append(prompts[i][:n] + list(verb[:-1]))
                s = where[key]
                for j, token in enumerate(verb):
                    spot = spots.setdefault((s, n - 1 + j), len(spots))
                    pick.append(spot)
                    target.append(token)
                    out_row.append(i)
                    out_col.append(c)
                    weight.append(1.0 / len(verb) if self.normalize else 1.0)
        scores = torch.zeros(len(tasks), self.n_max, device=device)
        if seqs:
            width = max(len(s) for s in seqs)
            ids = torch.zeros(len(seqs), width, dtype=torch.long)
            mask = torch.zeros(len(seqs), width, dtype=torch.long)
            for k, seq in enumerate(seqs):
                ids[k, : len(seq)] = torch.tensor(seq)
                mask[k, : len(seq)] = 1
            hidden = getattr(self, self.backbone_name)(
                input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
            ).last_hidden_state
            seq_idx, pos_idx = (torch.tensor(v, device=device) for v in zip(*spots, strict=True))
            logp = F.log_softmax(
                getattr(self, self.head_name)(hidden[seq_idx, pos_idx]).float(), -1
            )
            gathered = logp[torch.tensor(pick, device=device), torch.tensor(target, device=device)]
            gathered = gathered * torch.tensor(weight, device=device)
            index = (torch.tensor(out_row, device=device), torch.tensor(out_col, device=device))
            scores = scores.index_put(index, gathered, accumulate=True)
        sizes = torch.tensor([len(self.verbalizers[t]) for t in tasks], device=device)
        valid = torch.arange(self.n_max, device=device).unsqueeze(0) < sizes.unsqueeze(1)
        return scores.masked_fill(~valid, float("-inf"))


def check_verbalizers(verbalizers: Sequence[Sequence[Sequence[int]]]) -> Verbalizers:
    """Verbalizers as nested tuples; refuses an empty label and two classes of one task with the
    same label tokens (they could never be told apart)."""
    out = tuple(tuple(tuple(int(i) for i in verb) for verb in task) for task in verbalizers)
    if not out or any(not task for task in out):
        raise InputError("every task needs at least one class verbalizer")
    for t, task in enumerate(out):
        if any(not verb for verb in task):
            raise InputError(f"task {t} has a verbalizer with no tokens; give a label word")
        if len(set(task)) != len(task):
            raise InputError(
                f"task {t} has two classes with the same label tokens {task}; give distinct words"
            )
    return out


def verbalizer_ids(
    tokenizer: Any, template: str, words: Sequence[str], prefix: str = " "
) -> tuple[tuple[int, ...], ...]:
    """The label tokens of each class word as the tokenizer splits them *after the prompt*: the
    tokens of ``P("x") + prefix + word`` beyond those of ``P("x")`` (so SentencePiece
    tokenizers that fold a leading space into the word piece agree with the prompt), or the
    word tokenized alone where the prompt's tokens are not a prefix of the joint ones."""
    context = template.replace("{text}", "x")
    head = tokenizer(context, add_special_tokens=False)["input_ids"]
    out = []
    for word in words:
        joint = tokenizer(context + prefix + word, add_special_tokens=False)["input_ids"]
        if joint[: len(head)] == head and len(joint) > len(head):
            out.append(tuple(int(i) for i in joint[len(head) :]))
        else:
            out.append(tuple(tokenizer(prefix + word, add_special_tokens=False)["input_ids"]))
    return tuple(out)


def _leading_specials(tokenizer: Any, ids: Sequence[int]) -> int:
    special = set(tokenizer.all_special_ids)
    n = 0
    while n < len(ids) and ids[n] in special:
        n += 1
    return n


def encode_prompt(tokenizer: Any, text: str, template: str, max_length: int) -> list[int]:
    """The prompt tokens of ``text`` (special tokens such as a BOS included), at most
    ``max_length``: a longer text keeps its longest beginning that fits (whole words where one
    fits, else the first word's first characters), so the template's cue at the end (the
    position that predicts the label) is never cut."""

    def encode(part: str) -> list[int]:
        return [int(i) for i in tokenizer(template.replace("{text}", part))["input_ids"]]

    ids = encode(text)
    if len(ids) > max_length:
        words = text.split()
        if len(words) > 1 and len(encode(words[0])) <= max_length:
            pieces = [" ".join(words[:k]) for k in range(1, len(words))]
        else:
            pieces = [words[0][:k] for k in range(len(words[0]))] if words else [""]
        lo, hi = 0, len(pieces) - 1  # the longest piece that fits, by bisection
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if len(encode(pieces[mid])) <= max_length else (lo, mid - 1)
        ids = encode(pieces[lo])
    if len(ids) > max_length:
        raise InputError(
            f"the prompt {template!r} alone needs {len(ids)} tokens, more than "
            f"max_length={max_length}; raise max_length or shorten the template"
        )
    if not ids or _leading_specials(tokenizer, ids) == len(ids):
        raise InputError(f"the prompt of {text!r} has no tokens; check the template")
    return ids


def encode_prompts(
    tokenizer: Any, texts: Sequence[str], template: str, max_length: int, task_index: int
) -> NDArray[np.int32]:
    """``(n, 2 + max_length)`` rows ``[task_index, length, prompt tokens..., 0...]`` of the
    :func:`encode_prompt` of every text (see :class:`CausalScorer`)."""
    if "{text}" not in template:
        raise InputError(f"the prompt template {template!r} has no {{text}} placeholder")
    out = np.zeros((len(texts), ROW_HEADER + max_length), dtype=np.int32)
    for i, text in enumerate(texts):
        ids = encode_prompt(tokenizer, text, template, max_length)
        out[i, 0], out[i, 1] = task_index, len(ids)
        out[i, ROW_HEADER : ROW_HEADER + len(ids)] = ids
    return out


def embedding_names(module: nn.Module) -> tuple[str, ...]:
    """The token and learned position embedding tables of ``module`` (the weights of its
    ``nn.Embedding`` modules), under the keys of its ``state_dict()``."""
    names = {n for n, _ in module.named_parameters()}
    return tuple(
        f"{prefix}.weight"
        for prefix, m in module.named_modules()
        if isinstance(m, nn.Embedding) and f"{prefix}.weight" in names
    )


__all__ = [
    "ROW_HEADER",
    "CausalScorer",
    "ClassSelector",
    "Verbalizers",
    "check_verbalizers",
    "embedding_names",
    "encode_prompt",
    "encode_prompts",
    "load_causal_lm",
    "tied_aliases",
    "verbalizer_ids",
]
