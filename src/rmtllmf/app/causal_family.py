"""The ``hf-causal`` family: a Hugging Face causal LM scored by its verbalizers' likelihood on the
embedded text suite, fine-tuned with LoRA or fully per task.

Registers :data:`FAMILY` (study section ``causal:``,
:class:`~rmtllmf.pools.causal_pool.CausalPoolConfig`, required: it names the base model;
docs/causal-lm.md).
"""

from __future__ import annotations

from pathlib import Path

from rmtllmf.app.family_registry import Family, Preflight, register_family
from rmtllmf.app.preflight import base_model, checkpoint_fix
from rmtllmf.pools.base import ModelPool
from rmtllmf.pools.causal_pool import CausalPoolConfig, build_causal_pool


def build_pool(cfg: CausalPoolConfig, cache: Path, progress: bool, workers: int) -> ModelPool:
    """The causal pool of ``cfg`` under ``cache`` (:func:`build_causal_pool`)."""
    return build_causal_pool(cache, cfg, progress=progress, workers=workers)


def check_pool(cfg: CausalPoolConfig) -> Preflight:
    """The base causal LM found offline (a directory or the hub cache) with readable
    weights."""
    from rmtllmf.models.hf_text import resolve_text_model

    name = str(cfg.base)
    return base_model(
        "causal LM", name, lambda: resolve_text_model(cfg.base, offline=True), checkpoint_fix(name)
    )


FAMILY = register_family(
    Family(
        name="hf-causal",
        section="causal",
        config=CausalPoolConfig,
        build=build_pool,
        tasks=lambda cfg: cfg.tasks,
        check=check_pool,
        seconds_per_run=600.0,
        required="family hf-causal needs a 'causal:' section with base: (a causal LM directory "
        "or hub id; see docs/causal-lm.md)",
    )
)
