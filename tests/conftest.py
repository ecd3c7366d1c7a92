"""Shared fixtures; tests import reference implementations from ``oracles``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))

# Property tests draw the same examples on every run (CI stays deterministic); set
# HYPOTHESIS_PROFILE=explore to search with fresh random examples instead.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Commands run in-process here must not change the test process's allocator, nor the
# environment later subprocesses inherit (rmtllmf._malloc; tests/test_malloc.py probes it in
# subprocesses of its own).
os.environ["RMTLLMF_SYSTEM_MALLOC"] = "1"

from hf_tiny import byte_level_clip_tokenizer  # noqa: E402  (tests/ is on the path from here)


def stored_numbers(out: Path) -> dict[str, str]:
    """Every run's result in ``out/results.db`` (seconds aside) by its config."""
    from rmtllmf.study.store import ResultsDB

    db = ResultsDB(out / "results.db", read_only=True)
    try:
        return {
            r.config.model_dump_json(): json.dumps(r.result.to_json(), sort_keys=True)
            for r in db.rows()
        }
    finally:
        db.close()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20241122)


def make_tiny_base(path: Path) -> Path:
    """A random tiny-vit base checkpoint with its architecture in the metadata."""
    import json

    import torch
    from safetensors.torch import save_file

    from rmtllmf.models.tiny_vit import TinyVit, TinyVitConfig

    cfg = TinyVitConfig(patch_size=8, hidden=16, layers=1, heads=2, mlp=32, embed_dim=8)
    torch.manual_seed(0)
    model = TinyVit(cfg)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        path,
        {"rmtllmf": json.dumps({"config": cfg.model_dump()})},
    )
    return path


def tiny_zoo_config(root: Path, tasks: tuple[str, ...], **overrides):
    """A zoo config on the tiny random base with a few fine-tuning steps per task (seconds)."""
    from rmtllmf.pools.tiny_vit_pool import ZooConfig

    fields = {
        "tasks": tasks,
        "n_train": 96,
        "n_val": 32,
        "n_test": 48,
        "head_per_class": 2,
        "steps": 3,
        "batch": 16,
        "anchor_images": 24,
        "anchor_batch": 8,
        "anchor_domain_images": 4,
        "base": str(make_tiny_base(root / "base.safetensors")),
    }
    return ZooConfig(**{**fields, **overrides})


def build_tiny_zoo(root: Path, tasks: tuple[str, ...]):
    """The zoo of :func:`tiny_zoo_config`, built under ``root``."""
    from rmtllmf.pools.tiny_vit_pool import build_zoo

    return build_zoo(root / "zoo", tiny_zoo_config(root, tasks))


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """Three tasks of the embedded suite on the tiny random base."""
    return build_tiny_zoo(tmp_path_factory.mktemp("tiny_zoo"), ("signs", "textures", "counting"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP saved in HF format, two perturbed fine-tunes, a tiny image folder."""
    transformers = pytest.importorskip("transformers", reason="hf-clip needs transformers")
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("clip")
    tokenizer, vocab_size, bos, eos = byte_level_clip_tokenizer(root)
    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    base = transformers.CLIPModel(config)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    fts = []
    for i in range(2):
        model = transformers.CLIPModel(config)
        model.load_state_dict(
            {
                k: v + 0.01 * torch.randn_like(v)
                if v.is_floating_point() and k.startswith("vision")
                else v
                for k, v in base.state_dict().items()
            }
        )
        if i == 0:  # full CLIPModel directory
            model.save_pretrained(root / "ft0")
            fts.append(root / "ft0")
        else:  # CLIPVisionModel saved by transformers < 5: 'vision_model.' prefix, one file
            state = {
                k: v.contiguous()
                for k, v in model.state_dict().items()
                if k.startswith("vision_model.")
            }
            save_file(state, root / "ft1.safetensors")
            fts.append(root / "ft1.safetensors")
    folder = root / "images"
    rng = np.random.default_rng(0)
    for name, channel in (("red", 0), ("blue", 2)):
        (folder / name).mkdir(parents=True)
        for j in range(4):
            arr = rng.integers(0, 60, (40, 40, 3)).astype(np.uint8)
            arr[..., channel] = 220
            Image.fromarray(arr).save(folder / name / f"{j}.png")
    return root, fts, folder
