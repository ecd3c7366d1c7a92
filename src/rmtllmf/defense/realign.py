"""Realign (paper sec. III, second module): few-shot multi-task fine-tuning of the merged model
at the BS on ``k`` labelled samples per class of every task in the subset (10 by default, as the
paper), drawn from the *training* split, never from test.

Each step draws a batch from the union of the few-shot sets and minimises the cross-entropy of
every sample under its own task's fixed head. With ``freeze`` active, the embedding parameters
are re-loaded from the base first and excluded from training, so realignment works on the
attention and MLP weights only — the combination the paper calls R-MTLLMF.

**Budget chosen without test data.** With ``validate_every > 0`` the BS scores the model on
held-out labelled *validation* examples (``val_per_task`` per task, never the few-shot
examples, never test) before the first step and every ``validate_every`` steps, and keeps the
best state: early stopping, which also keeps the received merge itself (step 0) when no
realignment helps, so realignment cannot cost a merge it does not improve on validation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from rmtllmf.defense.defense_registry import get_defense
from rmtllmf.defense.freeze import reload_embeddings
from rmtllmf.errors import InputError
from rmtllmf.training.loops import Preprocess, cosine_lr


class RealignConfig(BaseModel):
    """Few-shot realignment settings (frozen)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    k_per_class: int = Field(10, ge=1)
    steps: int = Field(80, ge=0, description="the budget; validation keeps the best step of it")
    batch: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    validate_every: int = Field(
        20, ge=0, description="score on validation every this many steps, keep the best (0: off)"
    )
    val_per_task: int = Field(64, ge=1, description="validation examples per task")
    seed: int = 0


@dataclass(frozen=True)
class RealignLog:
    """What a realignment did: the loss per step, the validation curve ``(step, mean accuracy)``
    and the step whose state was kept (``steps`` without validation)."""

    losses: list[float]
    curve: list[tuple[int, float]]
    kept_step: int


@dataclass(frozen=True)
class FewShotSet:
    """``k`` labelled training examples per class of one task."""

    task: str
    images: NDArray[np.uint8]
    labels: NDArray[np.int64]


def few_shot_set(
    task: str,
    images: NDArray[np.uint8],
    labels: NDArray[np.int64],
    k: int,
    n_classes: int,
    seed: int = 0,
) -> FewShotSet:
    """Draw ``k`` examples of each class from a task's *training* split (seeded)."""
    rng = np.random.default_rng([seed, sum(map(ord, task))])
    picks = []
    for c in range(n_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < k:
            raise InputError(
                f"task {task!r}: class {c} has {len(members)} training examples, fewer than "
                f"k={k}; lower k_per_class"
            )
        picks.append(rng.choice(members, size=k, replace=False))
    idx = np.concatenate(picks)
    return FewShotSet(task, images[idx], labels[idx])


@torch.no_grad()
def _val_score(
    model: nn.Module,
    heads: Mapping[str, nn.Module],
    val_sets: Sequence[FewShotSet],
    preprocess: Preprocess,
) -> float:
    """Mean over tasks of the accuracy on each task's validation examples."""
    model.eval()
    scores = []
    for s in val_sets:
        logits = heads[s.task](model(preprocess(torch.from_numpy(s.images))))
        scores.append(float((logits.argmax(-1).cpu().numpy() == s.labels).mean()))
    model.train()
    return float(np.mean(scores))


def realign(
    model: nn.Module,
    heads: Mapping[str, nn.Module],
    sets: Sequence[FewShotSet],
    cfg: RealignConfig,
    *,
    frozen: Sequence[str] = (),
    preprocess: Preprocess,
    val_sets: Sequence[FewShotSet] = (),
) -> RealignLog:
    """Sec. III, realign: multi-task few-shot fine-tuning in place; parameters in ``frozen`` do
    not train; ``preprocess`` maps uint8 images to the model's input (the pool's).

    With ``cfg.validate_every > 0`` and ``val_sets``, the state with the best validation score
    (step 0 included) is kept (see module docs)."""
    if cfg.steps == 0 or not sets:
        return RealignLog([], [], 0)
    validate = cfg.validate_every > 0 and bool(val_sets)
    x = np.concatenate([s.images for s in sets])
    y = torch.from_numpy(np.concatenate([s.labels for s in sets]))
    owner = torch.from_numpy(
        np.concatenate([np.full(len(s.labels), i) for i, s in enumerate(sets)])
    )
    params = [p for n, p in model.named_parameters() if n not in set(frozen)]
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(n not in set(frozen))
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    images = torch.from_numpy(x)
    losses: list[float] = []
    keeper = _BestState(model, heads, val_sets, preprocess)
    model.train()
    if validate:
        keeper.check(0)
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * cosine_lr(step, cfg.steps, max(1, cfg.steps // 10))
        idx = torch.randint(0, len(y), (min(cfg.batch, len(y)),), generator=gen)
        loss = _multitask_loss(model, heads, sets, preprocess(images[idx]), y[idx], owner[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if validate and ((step + 1) % cfg.validate_every == 0 or step + 1 == cfg.steps):
            keeper.check(step + 1)
    model.eval()
    for n, p in model.named_parameters():
        p.requires_grad_(flags[n])
    kept = cfg.steps
    if keeper.best is not None:
        kept = keeper.best[1]
        model.load_state_dict(keeper.best[2])
    return RealignLog(losses, keeper.curve, kept)


def _multitask_loss(
    model: nn.Module,
    heads: Mapping[str, nn.Module],
    sets: Sequence[FewShotSet],
    x: torch.Tensor,
    y: torch.Tensor,
    owner: torch.Tensor,
) -> torch.Tensor:
    """Mean cross-entropy of a mixed batch, each example scored by its own task's head
    (``owner`` indexes ``sets``)."""
    z = model(x)
    y, owner = y.to(z.device), owner.to(z.device)
    loss = torch.zeros((), device=z.device)
    for i, s in enumerate(sets):
        mask = owner == i
        if mask.any():
            loss = loss + F.cross_entropy(heads[s.task](z[mask]), y[mask], reduction="sum")
    return loss / len(y)


class _BestState:
    """Scores the model on the validation sets at checkpoints and keeps the best state."""

    def __init__(
        self,
        model: nn.Module,
        heads: Mapping[str, nn.Module],
        val_sets: Sequence[FewShotSet],
        preprocess: Preprocess,
    ) -> None:
        self.model, self.heads, self.val_sets, self.preprocess = model, heads, val_sets, preprocess
        self.curve: list[tuple[int, float]] = []
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None

    def check(self, step: int) -> None:
        """Score the model at ``step``; keep a copy of its state if it is the best so far."""
        score = _val_score(self.model, self.heads, self.val_sets, self.preprocess)
        self.curve.append((step, score))
        if self.best is None or score > self.best[0]:
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best = (score, step, state)


def apply_defense(
    defense: str,
    model: nn.Module,
    base_state: Mapping[str, torch.Tensor],
    embedding_names: Sequence[str],
    heads: Mapping[str, nn.Module],
    sets: Sequence[FewShotSet],
    cfg: RealignConfig,
    *,
    preprocess: Preprocess,
    val_sets: Sequence[FewShotSet] = (),
) -> RealignLog:
    """Apply a named defense's model stages to ``model`` (its state is the merged model) in
    place: discard what was received, freeze, realign (:mod:`rmtllmf.defense.defense_registry`)."""
    spec = get_defense(defense)
    if spec.discard:
        model.load_state_dict(dict(base_state))
    if spec.freeze:
        model.load_state_dict(reload_embeddings(model.state_dict(), base_state, embedding_names))
    if spec.realign:
        return realign(
            model,
            heads,
            sets,
            cfg,
            frozen=embedding_names if spec.freeze else (),
            preprocess=preprocess,
            val_sets=val_sets,
        )
    return RealignLog([], [], 0)
