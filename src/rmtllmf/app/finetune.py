"""What ``rmtllmf finetune`` does: the chosen family's ``finetune`` hook."""

from __future__ import annotations

import argparse

from rmtllmf.app.family_registry import family_names, get_family
from rmtllmf.errors import InputError


def finetune(args: argparse.Namespace) -> int:
    """Fine-tune ``--family``'s base model on one task with the family's hook; its exit status."""
    if args.family not in family_names():
        raise InputError(
            f"--family {args.family} is not a registered family; choose one of "
            f"{', '.join(family_names())}"
        )
    hook = get_family(args.family).finetune
    if hook is None:
        able = [n for n in family_names() if get_family(n).finetune is not None]
        raise InputError(
            f"--family {args.family} has no finetune command; finetune trains {', '.join(able)} "
            "(a study of that family fine-tunes its own pool: rmtllmf reproduce)"
        )
    return hook(args)
