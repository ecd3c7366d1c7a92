"""The paper's own numbers (sec. IV, Fig. 2) in the report's metrics, for side-by-side tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rmtllmf.metrics import recovered_fraction


@dataclass(frozen=True)
class PaperReference:
    """One of the paper's N = 8 numbers: ``(low, high)`` normalized accuracy (equal where it
    gives one value), its recovered fraction and the chance level behind it."""

    scenario: str
    defense: str
    normalized: tuple[float, float]
    recovered: tuple[float, float]
    chance: float

    def to_json(self) -> dict[str, Any]:
        """As in ``summary.json``'s ``paper`` list."""
        return {
            "scenario": self.scenario,
            "defense": self.defense,
            "normalized": list(self.normalized),
            "recovered": list(self.recovered),
            "chance": self.chance,
        }


PAPER_CLASSES = {
    "Cars": 196,
    "DTD": 47,
    "EuroSAT": 10,
    "GTSRB": 43,
    "MNIST": 10,
    "RESISC45": 45,
    "SUN397": 397,
    "SVHN": 10,
}
"""Class counts of the paper's eight datasets (its chance level)."""
PAPER_FINETUNED_MEAN = 0.923
"""Mean fine-tuned accuracy of the CLIP ViT-B/16 experts of the paper's setting (FusionBench)."""
PAPER_NORMALIZED: dict[str, dict[str, tuple[float, float]]] = {
    "clean": {"none": (0.912, 0.912)},
    "ideal": {"none": (0.363, 0.363), "r-mtllmf": (0.891, 0.891)},
    "sum-rate": {"none": (0.04, 0.06), "r-mtllmf": (0.548, 0.548)},
    "strongest-user": {"none": (0.04, 0.06), "r-mtllmf": (0.533, 0.533)},
}
"""The paper's normalized accuracies at N = 8 (sec. IV, Fig. 2): ``(low, high)`` where it gives a
range (unprotected worst cases: "between 4% and 6%")."""


def paper_reference() -> list[PaperReference]:
    """The paper's N = 8 numbers beside their recovered fraction. Its chance level, normalized,
    is ``mean_t(1 / C_t) / PAPER_FINETUNED_MEAN`` (0.051), the mean fine-tuned accuracy standing
    in for the per-task ones the paper does not list."""
    chance = float(np.mean([1 / c for c in PAPER_CLASSES.values()])) / PAPER_FINETUNED_MEAN
    clean = PAPER_NORMALIZED["clean"]["none"][0]
    return [
        PaperReference(
            scenario=scenario,
            defense=defense,
            normalized=bounds,
            recovered=(
                recovered_fraction(bounds[0], chance, clean),
                recovered_fraction(bounds[1], chance, clean),
            ),
            chance=chance,
        )
        for scenario, cells in PAPER_NORMALIZED.items()
        for defense, bounds in cells.items()
    ]
