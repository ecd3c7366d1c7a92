"""The defense registry: every named defense the BS can apply, as one entry saying what it does.

A defense runs in up to three stages, in order:

1. on the received vectors, before the merge, using only what the BS knows about its channel
   (no labels; :mod:`rmtllmf.defense.blind`): ``denoise`` each user's vector (``shrink``,
   ``svd``) or drop unreliable users (``gate``), and ``aggregate`` them robustly (``median``,
   ``trimmed-mean``) instead of summing;
2. on the merged model: ``discard`` what was received (serve the base: the floors the paper
   lacks), ``freeze`` (re-load the base's embeddings, R-MTLLMF's first module);
3. ``realign`` on ``k`` labelled examples per class (R-MTLLMF's second module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rmtllmf.errors import InputError

Denoise = Literal["none", "shrink", "svd", "gate"]
Aggregate = Literal["sum", "median", "trimmed-mean"]


@dataclass(frozen=True)
class Defense:
    """What one named defense does (see module docs)."""

    summary: str
    denoise: Denoise = "none"
    aggregate: Aggregate = "sum"
    discard: bool = False
    freeze: bool = False
    realign: bool = False

    @property
    def on_sum(self) -> bool:
        """Whether it can act on the sum of the task vectors alone (an AirComp reception):
        not when it gates or aggregates the users' vectors one by one."""
        return self.aggregate == "sum" and self.denoise != "gate"

    @property
    def blind(self) -> bool:
        """Whether it acts on the received vectors themselves (stage 1)."""
        return self.denoise != "none" or self.aggregate != "sum"


DEFENSES: dict[str, Defense] = {
    "none": Defense("the merge of what was received"),
    "freeze": Defense("re-load the base's embeddings (R-MTLLMF's first module)", freeze=True),
    "realign": Defense("few-shot multi-task realignment (R-MTLLMF's second module)", realign=True),
    "r-mtllmf": Defense(
        "freeze, then realign the rest: the paper's defense", freeze=True, realign=True
    ),
    "base": Defense("discard what was received: the base model alone (a floor)", discard=True),
    "base+realign": Defense(
        "the base model, frozen and realigned like R-MTLLMF (a floor)",
        discard=True,
        freeze=True,
        realign=True,
    ),
    "shrink": Defense(
        "shrink each tensor by its estimated SNR (Wiener), no labels", denoise="shrink"
    ),
    "svd": Defense(
        "keep each weight matrix's singular values above the noise (Gavish-Donoho), shrink the "
        "other tensors; no labels",
        denoise="svd",
    ),
    "gate": Defense(
        "drop users whose estimated per-entry SNR is below 1; no labels", denoise="gate"
    ),
    "median": Defense(
        "coordinate-wise median of the users' vectors instead of their mean; no labels",
        aggregate="median",
    ),
    "trimmed-mean": Defense(
        "coordinate-wise 25% trimmed mean instead of the mean; no labels", aggregate="trimmed-mean"
    ),
    "svd+r-mtllmf": Defense(
        "svd, then R-MTLLMF: blind denoising before the labelled repair",
        denoise="svd",
        freeze=True,
        realign=True,
    ),
}
"""Every named defense, in the order reports list them."""
PAPER = ("none", "freeze", "realign", "r-mtllmf")
"""The paper's four (its ablation, Fig. 5)."""
REALIGNING = tuple(name for name, d in DEFENSES.items() if d.realign)
"""The defenses that need the few-shot sets."""
CHANNEL_FREE = tuple(name for name, d in DEFENSES.items() if d.discard)
"""The defenses whose outcome does not depend on what was received."""
BLIND = tuple(name for name, d in DEFENSES.items() if d.blind)
"""The defenses that act on the received vectors; they need an analog link (a known noise law)."""


def get_defense(name: str) -> Defense:
    """The defense called ``name``; an error lists the registered ones."""
    if name not in DEFENSES:
        raise InputError(f"unknown defense {name!r}; choose one of {', '.join(DEFENSES)}")
    return DEFENSES[name]
