"""Model families as one registry: everything a command needs to know about a family.

A *family* is a pretrained model kind with its task suite (``tiny-vit``, ``hf-clip``,
``hf-text``, ``hf-causal``). Its :class:`Family` entry says

* which section of a study config holds its pool's settings (``zoo:``, ``clip:``, ...) and the
  pydantic model that validates it, and whether the section may be left out;
* how its :class:`~rmtllmf.pools.base.ModelPool` is built from that section, a cache directory
  (``CACHE/<section>``), a progress flag and a process count, and its task suite;
* what the plan's estimates assume a run costs (``seconds_per_run``, one process) and whether
  it builds and runs one process per core by default (``parallel``);
* optionally, a line announcing a long pool build before it starts, the family's
  ``rmtllmf evaluate`` and ``rmtllmf finetune`` hooks, and its preflight (``rmtllmf reproduce
  --check``: are the checkpoints and datasets the config names there and loadable?).

Adding a family is one module that calls :func:`register_family`; ``reproduce``, the CLI and the
plan read the registry and nothing else. The built-in families live in
``rmtllmf.app.*_family`` and are registered on the first lookup; a family of a user's own
registers when its module is imported, and a worker process imports that module (``module``)
before it loads the pool.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from rmtllmf.errors import InputError
from rmtllmf.pools.base import ModelPool

C = TypeVar("C", bound=BaseModel)


@dataclass(frozen=True)
class Preflight:
    """What a family's ``check`` found, offline and without building anything: the assets the
    config names that are present and loadable (``found``, one line each), those that are not
    (``missing``, one line each naming the asset and the command that fetches or fixes it), and
    the entries of one task vector (``None`` where the base itself is missing)."""

    found: list[str]
    missing: list[str]
    entries: int | None


Scores = tuple[dict[str, float], dict[str, float], dict[str, str]]
"""What an ``evaluate`` hook returns: accuracy of the evaluated model per task, of the
fine-tuned experts per task, and what was scored per task (``test``, ``val``, or ``all images``
of an image folder)."""

BUILTIN_MODULES = (
    "rmtllmf.app.tiny_vit_family",
    "rmtllmf.app.clip_family",
    "rmtllmf.app.text_family",
    "rmtllmf.app.causal_family",
)
"""The modules that register the built-in families, imported on the first lookup."""


@dataclass(frozen=True)
class Family(Generic[C]):
    """One model family (see the module docstring for what each field is for)."""

    name: str
    """The family's name in ``family:`` and ``--family``."""
    section: str
    """The study config's key for the pool settings, and the pool's cache folder."""
    config: type[C]
    """The pydantic model of that section (frozen; part of the pool's cache key)."""
    build: Callable[[C, Path, bool, int], ModelPool]
    """``build(config, cache_dir, progress, workers)``: the pool, built or reused."""
    tasks: Callable[[C], Sequence[str]]
    """The pool's task suite under ``config``."""
    seconds_per_run: float
    """One run's single-process wall time assumed by the plan's estimate before the study has
    measured runs of its own (``docs/results.md``, ``docs/text.md`` for the measured ones)."""
    parallel: bool = False
    """Build the pool and run the sweep in one process per core by default (small models);
    otherwise one process (a large model fills the machine, or a GPU)."""
    required: str | None = None
    """None: the section has defaults; otherwise the error shown when it is missing."""
    announce: Callable[[C, Path, int], str | None] | None = None
    """``announce(config, cache_dir, workers)``: a line saying a long build is coming, or None."""
    evaluate: Callable[[argparse.Namespace], Scores] | None = None
    """``rmtllmf evaluate --family NAME``'s scoring, or None where the family has none."""
    finetune: Callable[[argparse.Namespace], int] | None = None
    """``rmtllmf finetune --family NAME``'s training, or None where the family has none."""
    check: Callable[[C], Preflight] | None = None
    """``rmtllmf reproduce --check``: the assets ``config`` names, checked offline in seconds
    (:class:`Preflight`), or None where the family has no preflight."""
    module: str = field(default="")
    """The module that registers the family (default: the one defining ``build``)."""

    def __post_init__(self) -> None:
        if not self.module:
            object.__setattr__(self, "module", self.build.__module__)

    def section_config(self, raw: Any) -> C:
        """The family's pool config from the study config's section (defaults where absent)."""
        if raw is None:
            if self.required is not None:
                raise InputError(self.required)
            return self.config()
        return raw if isinstance(raw, self.config) else self.config.model_validate(raw)


_FAMILIES: dict[str, Family[Any]] = {}
_builtins_loaded = False


def _load_builtins() -> None:
    """Import the built-in families' modules once (each registers its family)."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def register_family(family: Family[Any], *, replace: bool = False) -> Family[Any]:
    """Add ``family`` to the registry (``replace``: over a family of the same name); its name
    and its section must be new. Returns it, so a module can write
    ``FAMILY = register_family(Family(...))``."""
    _load_builtins()
    for other in _FAMILIES.values():
        if replace and other.name == family.name:
            continue
        if other.name == family.name or other.section == family.section:
            taken = "name" if other.name == family.name else f"section {family.section!r}"
            raise InputError(
                f"family {family.name!r}: its {taken} is taken by family {other.name!r}; "
                "choose another (or pass replace=True to replace a family of the same name)"
            )
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove family ``name`` (a family registered for a test or a session)."""
    _FAMILIES.pop(name, None)


def family_names() -> list[str]:
    """The registered families' names, built-ins first (in :data:`BUILTIN_MODULES`' order)."""
    _load_builtins()
    order = {module: i for i, module in enumerate(BUILTIN_MODULES)}
    return sorted(_FAMILIES, key=lambda n: order.get(_FAMILIES[n].module, len(order)))


def get_family(name: str) -> Family[Any]:
    """The family called ``name``; an error lists the registered ones."""
    _load_builtins()
    if name not in _FAMILIES:
        raise InputError(
            f"family {name!r} is not registered; choose one of {', '.join(family_names())} (a "
            "family of your own registers with rmtllmf.app.register_family when its module is "
            "imported)"
        )
    return _FAMILIES[name]


def family_of_section(section: str) -> Family[Any] | None:
    """The family whose study-config section is ``section``, or None."""
    return next((get_family(n) for n in family_names() if get_family(n).section == section), None)


def ensure_module(module: str) -> None:
    """Import ``module`` (a family's registering module) where this process has not yet."""
    if module:
        importlib.import_module(module)


def _with_command(name: str, command: Literal["evaluate", "finetune"]) -> Family[Any]:
    """The family of ``rmtllmf COMMAND --family NAME``, registered and with that hook."""
    names = family_names()
    if name not in names:
        raise InputError(
            f"--family {name} is not a registered family; choose one of {', '.join(names)}"
        )
    able = [n for n in names if getattr(get_family(n), command) is not None]
    if name not in able:
        raise InputError(
            f"--family {name} has no {command} command; {command} takes {', '.join(able)} "
            "(rmtllmf reproduce builds and scores the pool of any registered family)"
        )
    return get_family(name)


def evaluate_hook(name: str) -> Callable[[argparse.Namespace], Scores]:
    """``rmtllmf evaluate --family NAME``'s scoring; an error names the families that have one."""
    hook = _with_command(name, "evaluate").evaluate
    assert hook is not None  # _with_command checked it
    return hook


def finetune_hook(name: str) -> Callable[[argparse.Namespace], int]:
    """``rmtllmf finetune --family NAME``'s training; an error names the families that have one."""
    hook = _with_command(name, "finetune").finetune
    assert hook is not None  # _with_command checked it
    return hook
