"""Model pools: what is merged. The :class:`~rmtllmf.pools.base.ModelPool` protocol, the
embedded tiny-ViT zoo (:mod:`rmtllmf.pools.tiny_vit_pool`) and the Hugging Face CLIP pool
(:mod:`rmtllmf.pools.clip_pool`)."""
