"""What ``rmtllmf evaluate`` does: the chosen family's scores, and the helpers the families'
``evaluate`` hooks share (``TASK=PATH`` items, checkpoint errors named by their flag)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rmtllmf.app.family_registry import Scores, family_names, get_family
from rmtllmf.errors import CheckpointError, InputError


def scores(args: argparse.Namespace) -> Scores:
    """Score ``--model`` with ``--family``'s ``evaluate`` hook."""
    if args.family not in family_names():
        raise InputError(
            f"--family {args.family} is not a registered family; choose one of "
            f"{', '.join(family_names())}"
        )
    hook = get_family(args.family).evaluate
    if hook is None:
        able = [n for n in family_names() if get_family(n).evaluate is not None]
        raise InputError(
            f"--family {args.family} has no evaluate command; evaluate scores {', '.join(able)} "
            "(a study of that family reports its accuracies: rmtllmf reproduce)"
        )
    return hook(args)


def pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    """``TASK=VALUE`` items of ``flag`` as a dict."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise InputError(f"{flag} expects TASK=PATH items, got {item!r}")
        out[name] = value
    return out


def named_checkpoint_error(exc: CheckpointError, flag: str, path: str) -> CheckpointError:
    """A checkpoint error of ``flag``'s file; ``evaluate`` reads no pickles (it has no
    ``--allow-pickle``), so a pickle gets the way to convert it instead."""
    if "pickle" in str(exc):
        return CheckpointError(
            f"{flag} {path} is a pickle checkpoint, which evaluate does not load (pickles can run "
            'code); convert it once: python -c "import torch, safetensors.torch as s; '
            f"s.save_file(torch.load('{path}', weights_only=True), 'model.safetensors')\""
        )
    text = str(exc)
    if "--allow-nonfinite" in text:  # merge's flag; evaluate scores finite weights only
        text = text.split(". Check or re-save", 1)[0].split("; a merge of it", 1)[0]
        return CheckpointError(
            f"{flag}: {text}; evaluate scores only finite weights: check or re-save that "
            "checkpoint (a merge writes NaN or inf only when run with --allow-nonfinite)"
        )
    return CheckpointError(f"{flag}: {text}")
