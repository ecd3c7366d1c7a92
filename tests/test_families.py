"""Model families as one registry: a family defined in this file alone (a two-layer network on
Gaussian clusters, ``toy-mlp``) runs ``rmtllmf reproduce`` end to end, in this process and in
worker processes, without a line changed anywhere else in the project."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import BaseModel, ConfigDict
from torch import nn

from rmtllmf.app import Family, family_names, get_family, register_family, unregister_family
from rmtllmf.app.reproduce import ReproduceConfig, build_pool, load_config
from rmtllmf.cli import main
from rmtllmf.errors import InputError
from rmtllmf.pools.base import ModelPool, PoolRecord, RecordedAccuracies, Split
from rmtllmf.study.store import ResultsDB

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
    ),
    replace=True,
)

STUDY = {
    "family": "toy-mlp",
    "toy": {"steps": 60},
    "sweep": {
        "task_counts": [2, 3],
        "scenarios": ["ideal", "strongest-user"],
        "links": ["relative", "weights"],
        "k_values": [1],
        "realign": {"k_per_class": 2, "steps": 2, "batch": 8},
        "analysis": {"samples": 4, "probes": 1},
        "lambda_grid": [0.0, 0.5, 1.0],
    },
}


def _study(tmp_path: Path) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return path


def test_the_toy_family_is_registered_beside_the_builtins(tmp_path):
    assert {"tiny-vit", "hf-clip", "hf-text", "hf-causal", "toy-mlp"} <= set(family_names())
    assert get_family("toy-mlp").module == __name__
    pool = build_pool(load_config(_study(tmp_path)), tmp_path / "cache", progress=False)
    assert all(pool.finetuned_accuracy(t, "val") > 0.9 for t in ToyConfig().tasks)
    assert all(pool.base_accuracy(t, "val") < 0.8 for t in ToyConfig().tasks)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_reproduce_runs_a_family_defined_in_a_test(tmp_path, workers, capsys):
    out = tmp_path / "out"
    argv = ["reproduce", "--config", str(_study(tmp_path)), "--out", str(out)]
    argv += ["--cache", str(tmp_path / "cache"), "--threads", "1", "--workers", workers]
    assert main(argv) == 0
    assert "Normalized accuracy at N = 3" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_tasks"] == 3
    assert summary["clean"] > summary["chance"]
    resolved = json.loads((out / "config.json").read_text())["reproduce"]
    assert resolved["family"] == "toy-mlp" and resolved["toy"] == ToyConfig(steps=60).model_dump(
        mode="json"
    )
    db = ResultsDB(out / "results.db", read_only=True)
    try:
        roles = {r[0] for r in db.conn.execute("SELECT DISTINCT role FROM runs")}
    finally:
        db.close()
    assert {"clean", "ablation"} <= roles


def test_a_family_name_or_section_is_taken_once():
    clash = Family(
        name="toy-mlp",
        section="other",
        config=ToyConfig,
        build=build_toy_pool,
        tasks=lambda c: c.tasks,
        seconds_per_run=1.0,
    )
    with pytest.raises(InputError, match="name is taken by family 'toy-mlp'"):
        register_family(clash)
    with pytest.raises(InputError, match="section 'zoo' is taken by family 'tiny-vit'"):
        register_family(Family(**{**clash.__dict__, "name": "toy-2", "section": "zoo"}))
    register_family(Family(**{**clash.__dict__, "name": "toy-2", "section": "toy2"}))
    try:
        assert ReproduceConfig(family="toy-2").pool_config() == ToyConfig()
    finally:
        unregister_family("toy-2")
    with pytest.raises(InputError, match="family 'toy-2' is not registered; choose one of"):
        get_family("toy-2")


def test_a_config_section_no_family_owns_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"family": "toy-mlp", "toyy": {}}))
    with pytest.raises(InputError, match=r"toyy: is not a known setting.*toy \(toy-mlp\)"):
        load_config(path)
    path.write_text(yaml.safe_dump({"family": "toy-mlpp"}))
    with pytest.raises(InputError, match="family 'toy-mlpp' is not registered"):
        load_config(path)
    path.write_text(yaml.safe_dump({"family": "toy-mlp", "toy": {"dims": 3}}))
    with pytest.raises(InputError, match=r"toy\.dims: is not a known setting"):
        load_config(path)


def test_the_architecture_doc_lists_every_builtin_family():
    doc = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    for name in family_names():
        family = get_family(name)
        if family.module.startswith("rmtllmf."):
            row = next((r for r in rows if r.startswith(f"| `{name}`")), None)
            assert row is not None, f"docs/architecture.md has no row for family {name}"
            assert f"`{family.section}:`" in row
            assert family.module.removeprefix("rmtllmf.").replace(".", "/") + ".py" in row
