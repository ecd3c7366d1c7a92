"""The paper's study: one run (:mod:`~rmtllmf.study.experiment`: users, link, merge, defense,
evaluation), its interference analysis (:mod:`~rmtllmf.study.analysis`), the clean merge and
``lambda_N`` (:mod:`~rmtllmf.study.clean_merge`), the payload (:mod:`~rmtllmf.study.payload`),
the plan (:mod:`~rmtllmf.study.plan`, the SNR axis :mod:`~rmtllmf.study.snr_axis`, the rank
spectra :mod:`~rmtllmf.study.spectra`), and the resumable sweep (:mod:`~rmtllmf.study.sweep`,
:mod:`~rmtllmf.study.store`, :mod:`~rmtllmf.study.executors`). It sees a family only as a
:class:`~rmtllmf.pools.base.ModelPool`."""
