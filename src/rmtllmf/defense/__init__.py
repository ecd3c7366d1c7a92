"""R-MTLLMF (paper sec. III): embedding re-load (*freeze*) and few-shot *realign*ment.

Named defenses (:data:`DEFENSES`, :mod:`rmtllmf.defense.defense_registry`): the paper's ``none``,
``freeze``, ``realign`` and ``r-mtllmf`` (both); the floors ``base`` and ``base+realign``
(discard what was received); and receiver defenses that need no labels
(:mod:`rmtllmf.defense.blind`: ``shrink``, ``svd``, ``gate``, ``median``, ``trimmed-mean``) and
their composition
``svd+r-mtllmf``. :func:`blind_defense` and :func:`apply_defense` run their stages.
"""

from rmtllmf.defense.blind import blind_defense
from rmtllmf.defense.defense_registry import (
    BLIND,
    CHANNEL_FREE,
    DEFENSES,
    PAPER,
    REALIGNING,
    Defense,
    get_defense,
)
from rmtllmf.defense.freeze import reload_embeddings
from rmtllmf.defense.realign import (
    FewShotSet,
    RealignConfig,
    RealignLog,
    apply_defense,
    few_shot_set,
    realign,
)

__all__ = [
    "BLIND",
    "CHANNEL_FREE",
    "DEFENSES",
    "PAPER",
    "REALIGNING",
    "Defense",
    "FewShotSet",
    "RealignConfig",
    "RealignLog",
    "apply_defense",
    "blind_defense",
    "few_shot_set",
    "get_defense",
    "realign",
    "reload_embeddings",
]
