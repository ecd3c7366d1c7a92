"""Project exceptions and warnings.

Every error raised for bad input derives from :class:`RmtllmfError`, names the offending argument
and says how to fix it. Input errors also derive from :class:`ValueError`, so callers that already
catch ``ValueError`` keep working.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class RmtllmfError(Exception):
    """Base class of every error this project raises on purpose."""


class InputError(RmtllmfError, ValueError):
    """An argument has the wrong shape, type, range or value."""


class DegenerateChannelWarning(UserWarning):
    """A channel configuration makes some quantity infinite (e.g. a noise-free receive dimension).

    The computation goes on with the mathematically correct value (``inf`` rate, zero MSE); the
    warning says which users are affected and how to avoid it (usually: add a thermal floor).
    """


class CheckpointError(RmtllmfError):
    """A checkpoint cannot be read or written: missing, truncated, pickled, or mismatched."""


def validation_message(exc: ValidationError, names: Mapping[str, str] | None = None) -> str:
    """A pydantic ``ValidationError`` as one line, each problem as ``where: what (got value)``.

    ``where`` is the user's name for the field: ``names`` maps a field name or dotted path
    (``n_users``, ``path_loss.exponent``) to it (a flag such as ``--users``); other fields keep
    their dotted path (``sweep.task_counts[0]``), which is the key to fix in a YAML file. No
    pydantic URLs, no input types, no line breaks.
    """
    names = names or {}
    parts = []
    for err in exc.errors(include_url=False):
        loc = [str(x) for x in err.get("loc", ())]
        path = ".".join(x for x in loc if not x.isdigit())
        dotted = "".join(f"[{x}]" if x.isdigit() else f".{x}" for x in loc).lstrip(".")
        where = names.get(path) or (names.get(loc[-1]) if loc else None) or dotted
        what = _PHRASES.get(str(err.get("type")), str(err.get("msg", "invalid")))
        what = what.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if what[:1].isupper() and not what[1:2].isupper():
            what = what[0].lower() + what[1:]
        shown = err.get("input")
        got = (
            f" (got {shown!r})"
            if err.get("type") not in ("missing", "model_type")
            and isinstance(shown, str | int | float | bool)
            and len(repr(shown)) <= 40
            else ""
        )
        parts.append(f"{where}: {what}{got}" if where else f"{what}{got}")
    return " ".join("; ".join(parts).split())


_PHRASES = {
    "extra_forbidden": "is not a known setting",
    "missing": "is required",
}
"""Pydantic error types whose own wording does not read well after a field name."""


ONLINE_HINT = "--online on the command line, offline: false in a study config"
"""How a user of this project allows Hugging Face downloads."""


def hub_unavailable(what: str, name: object, exc: BaseException, *, offline: bool) -> str:
    """Why ``what`` ``name`` could not be had from the Hugging Face hub, in this project's
    words: offline, that it is neither a local path nor in the local cache and how to allow a
    download (:data:`ONLINE_HINT`); online, the hub's reason in short, without its URLs and
    Python-argument advice."""
    if offline:
        return (
            f"{what} {name} is neither a local directory nor in the local Hugging Face cache; "
            f"give a local directory, or allow the download once ({ONLINE_HINT})"
        )
    reason = re.sub(r"https?://\S+", "", str(exc).strip().splitlines()[0] if str(exc) else "")
    reason = " ".join(reason.split())[:160] or type(exc).__name__
    return f"{what} {name} could not be downloaded ({reason}); check the id and the network"
