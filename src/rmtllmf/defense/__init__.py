"""R-MTLLMF (paper sec. III): embedding re-load (*freeze*) and few-shot *realign*ment.

Named defenses: ``none``, ``freeze``, ``realign`` and ``r-mtllmf`` (both), and the controls
``base`` and ``base+realign`` (discard what was received). Each module works alone;
:func:`apply_defense` composes them.
"""

from rmtllmf.defense.freeze import reload_embeddings
from rmtllmf.defense.realign import (
    CHANNEL_FREE,
    DEFENSES,
    REALIGNING,
    FewShotSet,
    RealignConfig,
    RealignLog,
    apply_defense,
    few_shot_set,
    realign,
)

__all__ = [
    "CHANNEL_FREE",
    "DEFENSES",
    "REALIGNING",
    "FewShotSet",
    "RealignConfig",
    "RealignLog",
    "apply_defense",
    "few_shot_set",
    "realign",
    "reload_embeddings",
]
