"""Freeze (paper sec. III, first module): after aggregation, re-load the base model's patch,
position and class embeddings into the merged model, discarding whatever noise the channel
added to them: ``theta_MTLLM[e] <- theta_base[e]`` for every embedding parameter ``e``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from rmtllmf.errors import InputError


def reload_embeddings(
    merged: Mapping[str, torch.Tensor],
    base: Mapping[str, torch.Tensor],
    names: Sequence[str],
) -> dict[str, torch.Tensor]:
    """Sec. III, freeze: a copy of ``merged`` whose parameters ``names`` hold the base's values,
    ``theta_MTLLM[e] <- theta_base[e]``."""
    missing = [n for n in names if n not in merged or n not in base]
    if missing:
        raise InputError(
            f"embedding parameters {missing} are not in both models; the model family's "
            "EMBEDDING_PARAMS must name parameters of its state dict"
        )
    out = {k: v.clone() for k, v in merged.items()}
    for n in names:
        out[n] = base[n].clone()
    return out
