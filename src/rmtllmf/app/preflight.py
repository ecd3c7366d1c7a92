"""``rmtllmf reproduce --check``: before a long study, is everything it needs there?

The study's family checks the assets its config names, offline and from file headers only
(:attr:`~rmtllmf.app.family_registry.Family.check`); this module adds the plan (runs, channel
uses, entries per task vector) and the estimated time, and the helpers the families' checks
share.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rmtllmf.app.family_registry import Preflight
from rmtllmf.app.reproduce import ReproduceConfig, sweep_config
from rmtllmf.errors import CheckpointError, InputError
from rmtllmf.fusion import LazyCheckpoint
from rmtllmf.study.plan import subsets
from rmtllmf.study.sweep import shard_groups


def float_entries(path: str | Path, select: Callable[[str], bool] = lambda _: True) -> int:
    """The floating-point entries of the tensors ``select`` keeps in the checkpoint ``path``,
    read from its headers (a corrupt or truncated header is a :class:`CheckpointError`)."""
    with LazyCheckpoint(path) as ckpt:
        names = ckpt.keys()
        metas = [ckpt.meta(k) for k in names if select(k)]
    return sum(math.prod(shape) for shape, dtype in metas if dtype.is_floating_point)


def checkpoint_fix(name: str) -> str:
    """What to do about checkpoint ``name`` that is missing or unreadable: a local path is
    re-saved; a hub id is fetched into the local cache once."""
    if Path(name).exists():
        return "re-save or re-download that checkpoint"
    if name.startswith((".", "/", "~")):
        return "give the path of an existing checkpoint"
    return f"fetch it with: huggingface-cli download {name}"


@dataclass(frozen=True)
class StudyPreflight:
    """The family's findings and the study's plan."""

    family: Preflight
    runs: int
    channel_uses: int
    seconds: float
    """Estimated wall time of the sweep on the given processes (the family's seconds per run)."""


def preflight(cfg: ReproduceConfig, workers: int) -> StudyPreflight:
    """Check ``cfg``'s assets (its family's ``check``) and size its plan."""
    family = cfg.entry
    if family.check is None:
        raise InputError(
            f"family {family.name} has no preflight; run the study (its pool build names what "
            "is missing)"
        )
    found = family.check(cfg.pool_config())
    scfg = sweep_config(cfg)
    groups = shard_groups(scfg, dict.fromkeys(subsets(scfg), 0.0), (0, 1))
    runs = sum(len(group) for group in groups)
    seconds = runs * family.seconds_per_run / max(1, workers)
    return StudyPreflight(found, runs, len(groups), seconds)


def base_model(what: str, name: str, locate: Callable[[], Path], fix: str) -> Preflight:
    """The preflight of a family whose only asset is its base model: ``locate()`` finds it
    offline, its headers are read (``fix`` is what to do when either fails)."""
    try:
        path = locate()
        entries = float_entries(path)
    except (CheckpointError, InputError) as exc:
        return Preflight([], [unreadable(what, name, exc, fix)], None)
    return Preflight([f"{what} {name}: {path} ({entries:,} entries)"], [], entries)


def unreadable(what: str, name: str, exc: CheckpointError | InputError, fix: str) -> str:
    """The line for an asset that is missing or cannot be read, with its fix."""
    return f"{what} {name}: {str(exc).split('; ')[0]}; {fix}"
