"""Task suites and the data loaders, all seeded.

* :mod:`~rmtllmf.data.synthetic` (rendered by :mod:`~rmtllmf.data.render`): the embedded
  eight-task image suite; :mod:`~rmtllmf.data.pretext`: the tiny base's pretraining data;
* :mod:`~rmtllmf.data.text`: the eight-task text suite (WordNet, Faker, wordfreq, VADER);
* :mod:`~rmtllmf.data.real`: image folders and Hugging Face datasets for ``hf-clip``.
"""
