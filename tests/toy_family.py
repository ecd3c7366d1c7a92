"""A model family of its own, as a user would add one: a two-layer network on Gaussian clusters
(``toy-mlp``, study section ``toy:``). This file is everything adding it takes: a config, a pool
(:class:`~rmtllmf.pools.base.ModelPool`), a builder and one :func:`register_family` call, which
runs when the module is imported (a worker process imports it by ``Family.module``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from rmtllmf.app import Family, register_family
from rmtllmf.pools.base import ModelPool, PoolRecord, RecordedAccuracies, Split

WIDTH = 8


class ToyConfig(BaseModel):
    """The toy pool's settings (the study config's ``toy:`` section)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: tuple[str, ...] = ("left", "right", "middle")
    dim: int = 12
    per_class: int = 40
    steps: int = 60
    seed: int = 0


class ToyNet(nn.Module):
    """Embedding layer (reloaded by R-MTLLMF) and one block."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, WIDTH)
        self.block = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.block(torch.tanh(self.embed(x))))


def _clusters(rng: np.random.Generator, dim: int, classes: int, n: int) -> dict[str, Split]:
    """Each class a cluster of uint8 vectors around its own centre; train / val / test."""
    centres = rng.uniform(40, 215, size=(classes, dim))
    out = {}
    for split in ("train", "val", "test"):
        labels = np.repeat(np.arange(classes), n)
        points = centres[labels] + rng.normal(0, 25, size=(len(labels), dim))
        out[split] = (np.clip(points, 0, 255).astype(np.uint8), labels.astype(np.int64))
    return out


class ToyPool(RecordedAccuracies):
    """A :class:`~rmtllmf.pools.base.ModelPool`: one random base, fixed random heads, one
    fine-tune per task (heads fixed), all built in memory from the config's seed."""

    def __init__(self, cfg: ToyConfig) -> None:
        rng = np.random.default_rng(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.data = {
            t: _clusters(rng, cfg.dim, 3 + i % 2, cfg.per_class) for i, t in enumerate(cfg.tasks)
        }
        self.heads = {
            t: nn.Linear(WIDTH, self.n_classes(t)).requires_grad_(False) for t in cfg.tasks
        }
        self.base_state = {k: v.clone() for k, v in ToyNet(cfg.dim).state_dict().items()}
        self.finetuned = {t: self._finetune(t) for t in cfg.tasks}
        accuracy = {
            kind: {
                t: {s: self._accuracy(state(t), t, s) for s in ("val", "test")} for t in cfg.tasks
            }
            for kind, state in (
                ("base", lambda t: self.base_state),
                ("finetuned", lambda t: self.finetuned[t]),
            )
        }
        self.record = PoolRecord(config=cfg.model_dump(), **accuracy)

    @property
    def pool_id(self) -> str:
        return "toy-" + self.cfg.model_dump_json()

    @property
    def embedding_names(self) -> tuple[str, ...]:
        return ("embed.weight", "embed.bias")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() / 255.0

    def n_classes(self, task: str) -> int:
        return int(self.data[task]["train"][1].max()) + 1

    def model_from_state(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        model = ToyNet(self.cfg.dim)
        model.load_state_dict(dict(state))
        return model

    def _logits(self, model: nn.Module, task: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data[task][split]
        return self.heads[task](model(self.preprocess(torch.from_numpy(x)))), torch.from_numpy(y)

    def _accuracy(self, state: Mapping[str, torch.Tensor], task: str, split: str) -> float:
        with torch.no_grad():
            logits, y = self._logits(self.model_from_state(state), task, split)
        return float((logits.argmax(1) == y).float().mean())

    def task_accuracy(
        self, state: Mapping[str, torch.Tensor], tasks: Sequence[str], split: str = "test"
    ) -> dict[str, float]:
        return {t: self._accuracy(state, t, split) for t in tasks}

    def _finetune(self, task: str) -> dict[str, torch.Tensor]:
        model = self.model_from_state(self.base_state)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(self.cfg.steps):
            logits, y = self._logits(model, task, "train")
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


def build_toy_pool(cfg: ToyConfig, cache: Path, progress: bool, workers: int) -> ModelPool:
    """The toy pool (nothing cached: it builds in well under a second)."""
    return ToyPool(cfg)


TOY = register_family(
    Family(
        name="toy-mlp",
        section="toy",
        config=ToyConfig,
        build=build_toy_pool,
        tasks=lambda cfg: cfg.tasks,
        seconds_per_run=0.2,
    )
)
