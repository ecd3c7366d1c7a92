"""Model pools: what is merged (FusionBench's model pool and task pool in one interface).

:class:`~rmtllmf.pools.base.ModelPool` is what the study reads of a family; its four
implementations build or load a base, one expert per task, fixed heads and the task data, and
cache what they measure:

* :mod:`~rmtllmf.pools.tiny_vit_pool` (:class:`TinyVitPool`, the embedded zoo; its config
  :mod:`~rmtllmf.pools.zoo_config`, its data :mod:`~rmtllmf.pools.zoo_data`);
* :mod:`~rmtllmf.pools.clip_pool` (``hf-clip``: given checkpoints, zero-shot heads);
* :mod:`~rmtllmf.pools.text_pool` (``hf-text``) and :mod:`~rmtllmf.pools.causal_pool`
  (``hf-causal``) on the text suite, built alike (:mod:`~rmtllmf.pools.text_suite_pool`);
* :mod:`~rmtllmf.pools.workers`: fine-tunes in single-threaded worker processes.

Which pool a study uses is the family registry's business (:mod:`rmtllmf.app.family_registry`).
"""
