"""What the families' ``rmtllmf evaluate`` hooks share: ``TASK=PATH`` items and checkpoint
errors named by their flag (each hook is its family's: :func:`rmtllmf.app.family_registry.
evaluate_hook`)."""

from __future__ import annotations

from collections.abc import Sequence

from rmtllmf.errors import CheckpointError, InputError


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
