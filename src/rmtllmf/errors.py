"""Project exceptions and warnings.

Every error raised for bad input derives from :class:`RmtllmfError`, names the offending argument
and says how to fix it. Input errors also derive from :class:`ValueError`, so callers that already
catch ``ValueError`` keep working.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

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


def validation_message(
    exc: ValidationError, names: Mapping[str, str] | None = None, *, prefix: str = ""
) -> str:
    """A pydantic ``ValidationError`` as one line, each problem as ``where: what (got value)``.

    ``where`` is the user's name for the field: ``names`` maps a field name or dotted path
    (``n_users``, ``path_loss.exponent``) to it (a flag such as ``--users``); other fields keep
    their dotted path (``sweep.task_counts[0]``), which is the key to fix in a YAML file;
    ``prefix`` is the path of the validated model within a larger file (``zoo``). No pydantic
    URLs, no input types, no line breaks.
    """
    names = names or {}
    parts = []
    for err in exc.errors(include_url=False):
        loc = [*filter(None, [prefix]), *(str(x) for x in err.get("loc", ()))]
        path = ".".join(x for x in loc if not x.isdigit())
        dotted = "".join(f"[{x}]" if x.isdigit() else f".{x}" for x in loc).lstrip(".")
        where = names.get(path) or (names.get(loc[-1]) if loc else None) or dotted
        what = _phrase(err)
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


def _phrase(err: Mapping[str, Any]) -> str:
    """What is wrong, in this project's words (never pydantic's "Input should be ...")."""
    kind, ctx, given = str(err.get("type")), dict(err.get("ctx") or {}), err.get("input")
    if isinstance(given, float) and not math.isfinite(given):
        return "must be a finite number"
    bounds = {
        "greater_than": "must be above {gt}",
        "greater_than_equal": "must be at least {ge}",
        "less_than": "must be below {lt}",
        "less_than_equal": "must be at most {le}",
        "multiple_of": "must be a multiple of {multiple_of}",
    }
    if kind in bounds:
        return bounds[kind].format(**ctx)
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', 'the listed values')}"
    if kind in ("too_short", "too_long"):
        side = "at least" if kind == "too_short" else "at most"
        limit = ctx.get("min_length" if kind == "too_short" else "max_length")
        return f"needs {side} {limit} item(s)"
    if kind.startswith(("dict_", "model_")) or kind == "model_attributes_type":
        return "must be a mapping of settings (key: value)"
    if kind in _PHRASES:
        return _PHRASES[kind]
    what = str(err.get("msg", "invalid"))
    what = what.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if what[:1].isupper() and not what[1:2].isupper():
        what = what[0].lower() + what[1:]
    return what.replace("input should be", "must be").replace("Input should be", "must be")


_PHRASES = {
    "extra_forbidden": "is not a known setting",
    "missing": "is required",
    "finite_number": "must be a finite number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
}
"""Pydantic error types and the words that say what is wrong."""


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
