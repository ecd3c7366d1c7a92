"""LoRA fine-tuning (through ``peft``) and what a LoRA user can send.

A LoRA user adapts each target weight ``W`` (``m x n``) by a rank-``r`` update

    Delta W = s B A,   A in R^{r x n},  B in R^{m x r},  s = alpha / r  (alpha / sqrt(r), rsLoRA),

and trains only ``A`` and ``B``. Over the uplink it may send either the *delta* ``s B A``
(``m n`` entries per matrix, what task arithmetic merges) or the *factors* ``A`` and ``B``
(``r (m + n)`` entries). Noise on the factors is not noise on the product: with received
``A + N_A`` and ``B + N_B`` the BS forms

    s (B + N_B)(A + N_A) = s B A + s B N_A + s N_B A + s N_B N_A,

so the error is shaped by the other factor and has a second-order term.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from rmtllmf._io import atomic_output
from rmtllmf.errors import CheckpointError


@dataclass(frozen=True)
class LoraFactors:
    """One adapted weight's factors and scale (see module docs)."""

    A: torch.Tensor
    B: torch.Tensor
    scaling: float

    def delta(self) -> torch.Tensor:
        """``s B A``: the update the factors stand for."""
        return self.scaling * (self.B @ self.A)

    @property
    def entries(self) -> int:
        """Entries of the factor payload, ``r (m + n)``."""
        return int(self.A.numel() + self.B.numel())


def inject_lora(
    model: nn.Module,
    hf_model: nn.Module,
    *,
    rank: int,
    alpha: int,
    targets: Sequence[str],
    rslora: bool = False,
) -> None:
    """Add LoRA adapters (peft, no dropout) to the ``targets`` linear layers of ``hf_model`` in
    place and make only the adapters of ``model`` (which holds ``hf_model``'s modules)
    trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(targets),
        lora_dropout=0.0,
        use_rslora=rslora,
    )
    inject_adapter_in_model(config, hf_model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)


def lora_factors(model: nn.Module) -> dict[str, LoraFactors]:
    """The factors of every LoRA layer of ``model``, keyed by the adapted weight's state-dict
    key (``<module>.weight``)."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            a: Any = getattr(module, "lora_A")["default"]  # noqa: B009  (nn.Module typing)
            b: Any = getattr(module, "lora_B")["default"]  # noqa: B009
            out[f"{name}.weight"] = LoraFactors(
                a.weight.detach().clone(),
                b.weight.detach().clone(),
                float(module.scaling["default"]),
            )
    if not out:
        raise CheckpointError("the model has no LoRA layers; inject adapters first")
    return out


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict without LoRA tensors and with peft's ``base_layer.`` removed from
    key names: the keys the model had before adapters were injected."""
    return {
        k.replace(".base_layer.", "."): v.detach().clone()
        for k, v in model.state_dict().items()
        if "lora_" not in k
    }


def apply_factors(
    base: Mapping[str, torch.Tensor], factors: Mapping[str, LoraFactors]
) -> dict[str, torch.Tensor]:
    """``base`` with every adapted weight replaced by ``W + s B A`` (the merged fine-tune)."""
    unknown = sorted(set(factors) - set(base))
    if unknown:
        raise CheckpointError(f"LoRA factors for weights the base lacks: {unknown[:5]}")
    out = {k: v.clone() for k, v in base.items()}
    for key, f in factors.items():
        out[key] = (base[key].float() + f.delta()).to(base[key].dtype)
    return out


def save_factors(path: str | Path, factors: Mapping[str, LoraFactors]) -> None:
    """Write factors as safetensors (``<key>.lora_A`` / ``<key>.lora_B``; scales in the
    metadata)."""
    from safetensors.torch import save_file

    tensors = {}
    for key, f in factors.items():
        tensors[f"{key}.lora_A"] = f.A.contiguous()
        tensors[f"{key}.lora_B"] = f.B.contiguous()
    scales = json.dumps({k: f.scaling for k, f in factors.items()})
    with atomic_output(path) as tmp:
        save_file(tensors, tmp, {"lora_scaling": scales})


def load_factors(path: str | Path) -> dict[str, LoraFactors]:
    """Read factors written by :func:`save_factors`."""
    with safe_open(str(path), framework="pt") as fh:
        scales = json.loads((fh.metadata() or {}).get("lora_scaling", "{}"))
        return {
            key: LoraFactors(
                fh.get_tensor(f"{key}.lora_A"), fh.get_tensor(f"{key}.lora_B"), float(scale)
            )
            for key, scale in scales.items()
        }


__all__ = [
    "LoraFactors",
    "apply_factors",
    "inject_lora",
    "load_factors",
    "lora_factors",
    "plain_state",
    "save_factors",
]
