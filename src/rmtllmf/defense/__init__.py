"""R-MTLLMF (paper sec. III): embedding re-load (*freeze*) and few-shot *realign*ment.

Named defenses: ``none``, ``freeze``, ``realign`` and ``r-mtllmf`` (both). Each module works
alone; :func:`apply_defense` composes them.
"""

from rmtllmf.defense.freeze import reload_embeddings
from rmtllmf.defense.realign import (
    DEFENSES,
    RealignConfig,
    apply_defense,
    few_shot_set,
    realign,
)

__all__ = [
    "DEFENSES",
    "RealignConfig",
    "apply_defense",
    "few_shot_set",
    "realign",
    "reload_embeddings",
]
