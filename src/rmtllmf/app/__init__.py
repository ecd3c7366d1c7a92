"""What each command does, between the report and the command line.

``cli/`` parses flags and prints; this package carries the work out:

* :mod:`~rmtllmf.app.family_registry`: model families as one registry (:class:`Family`,
  :func:`register_family`); the built-in families register in :mod:`~rmtllmf.app.tiny_vit_family`,
  :mod:`~rmtllmf.app.clip_family`, :mod:`~rmtllmf.app.text_family` and
  :mod:`~rmtllmf.app.causal_family`, each with its ``evaluate`` / ``finetune`` hooks;
* :mod:`~rmtllmf.app.reproduce`: the study (config, pool, sweep, report, shards);
* :mod:`~rmtllmf.app.export`: a study's runs into TensorBoard or MLflow;
* :mod:`~rmtllmf.app.preflight`: ``reproduce --check``, the family's check of its assets, the
  plan and its time;
* :mod:`~rmtllmf.app.zoo`: the ``zoo build`` command; :mod:`~rmtllmf.app.evaluate`: what the
  families' ``evaluate`` hooks share (``evaluate`` and ``finetune`` run the family's hook,
  :func:`~rmtllmf.app.family_registry.evaluate_hook` / ``finetune_hook``).

A module of ``app/`` and one of ``cli/`` share a name only where they are one command's two
halves (``cli/reproduce.py`` parses, ``app/reproduce.py`` does).
"""

from rmtllmf.app.family_registry import (
    Family,
    family_names,
    get_family,
    register_family,
    unregister_family,
)

__all__ = ["Family", "family_names", "get_family", "register_family", "unregister_family"]
