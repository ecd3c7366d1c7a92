"""rmtllmf: resilient multi-task model fusion over jammed MIMO uplinks.

Implements "R-MTLLMF: Resilient Multi-Task Large Language Model Fusion at the Wireless Edge"
(Djuhera et al.). The wireless physical layer lives in :mod:`rmtllmf.channel`.
"""

__version__ = "0.1.0"
