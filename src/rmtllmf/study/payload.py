"""What each user sends: a full task vector, or for a LoRA user the delta ``s B A`` or its
factors ``A`` and ``B`` (:mod:`rmtllmf.models.lora`), and what that costs the channel.

* ``delta`` (every pool): the task vector ``tau_q``. A LoRA user's delta is nonzero only on the
  adapted weights, so a LoRA user sends only those (``m n`` entries per adapted matrix).
* ``factors`` (LoRA pools): ``A_q`` and ``B_q`` of every adapted weight (``r (m + n)``
  entries). The BS rebuilds ``s (B_q + N_B)(A_q + N_A)`` per weight and merges those: the noise
  reaches the product through the other factor (``s B N_A + s N_B A``) plus a second-order term.

Channel uses per user: an analog link sends one entry per channel use (eq. 1's symbol is the
entry itself); the digital link sends ``bits`` bits per entry in ``log2 M`` bits per QAM symbol,
``ceil(entries * bits / log2 M)`` channel uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from numpy.typing import NDArray

from rmtllmf.channel import SymbolLinkConfig
from rmtllmf.errors import InputError
from rmtllmf.fusion import TaskVector
from rmtllmf.models.lora import LoraFactors
from rmtllmf.pools.base import ModelPool

FACTOR_A, FACTOR_B = ".lora_A", ".lora_B"


def lora_of(pool: ModelPool) -> Mapping[str, Mapping[str, LoraFactors]]:
    """The pool's LoRA factors per task (empty: its users fine-tuned every weight)."""
    lora: Mapping[str, Mapping[str, LoraFactors]] = getattr(pool, "lora", {}) or {}
    return lora


def clean_vectors(
    pool: ModelPool, tasks: tuple[str, ...], base: Mapping[str, torch.Tensor]
) -> list[TaskVector]:
    """Each user's task vector: ``theta_ft - theta_base`` (eq. 1), or for a LoRA user ``s B A``
    on the adapted weights only."""
    lora = lora_of(pool)
    if lora:
        return [TaskVector({k: f.delta() for k, f in lora[t].items()}) for t in tasks]
    return [TaskVector.from_models(dict(base), dict(pool.finetuned[t])) for t in tasks]


def sent_vectors(pool: ModelPool, tasks: tuple[str, ...], payload: str) -> list[TaskVector] | None:
    """What the users put on the air when it is not their task vector (the LoRA factors), else
    ``None``."""
    if payload == "delta":
        return None
    lora = lora_of(pool)
    if payload != "factors" or not lora:
        raise InputError(
            f"payload {payload!r} needs a LoRA pool (set lora_rank in the text pool's config); "
            "full fine-tunes send their task vector (payload 'delta')"
        )
    out = []
    for t in tasks:
        tensors: dict[str, torch.Tensor] = {}
        for key, f in lora[t].items():
            tensors[key + FACTOR_A], tensors[key + FACTOR_B] = f.A.float(), f.B.float()
        out.append(TaskVector(tensors))
    return out


def deltas_from_factors(
    pool: ModelPool,
    tasks: tuple[str, ...],
    received: list[NDArray[np.float32]],
    sent: list[TaskVector],
    clean: list[TaskVector],
) -> list[NDArray[np.float32]]:
    """The BS's rebuilt deltas ``s B_hat A_hat`` (flat, in the clean vectors' layout) from the
    received factor vectors."""
    lora = lora_of(pool)
    out = []
    for t, flat, tv_sent, tv_clean in zip(tasks, received, sent, clean, strict=True):
        factors = TaskVector.from_flat(flat, tv_sent.layout).tensors
        deltas = {
            key: lora[t][key].scaling * (factors[key + FACTOR_B] @ factors[key + FACTOR_A])
            for key in tv_clean.tensors
        }
        out.append(TaskVector(deltas).flatten())
    return out


def zero_offsets(sent: list[TaskVector]) -> dict[str, torch.Tensor]:
    """The 'base' of a factor payload: zeros (a factor has no pretrained value; on the weights
    link the user sends the factors themselves, power-normalised)."""
    return {k: torch.zeros_like(v) for k, v in sent[0].tensors.items()}


def channel_uses(entries: int, link: str, symbol: SymbolLinkConfig) -> int:
    """Channel uses one user needs for ``entries`` values on ``link`` (see module docs)."""
    if link == "symbol":
        return math.ceil(entries * symbol.bits / math.log2(symbol.modulation_order))
    return entries


def payload_entries(pool: ModelPool, task: str, payload: str) -> int:
    """Entries one user sends for ``task`` with ``payload``."""
    lora = lora_of(pool)
    if payload == "factors":
        return sum(f.entries for f in lora[task].values())
    if lora:
        return sum(int(f.A.shape[1] * f.B.shape[0]) for f in lora[task].values())
    base = pool.base_state
    return sum(int(v.numel()) for v in base.values() if v.is_floating_point())


__all__ = [
    "channel_uses",
    "clean_vectors",
    "deltas_from_factors",
    "lora_of",
    "payload_entries",
    "sent_vectors",
    "zero_offsets",
]
