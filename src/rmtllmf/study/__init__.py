"""The paper's study: one run (:mod:`~rmtllmf.study.experiment`), its interference analysis,
the clean merge and ``lambda_N`` (:mod:`~rmtllmf.study.clean_merge`), and the resumable sweep (plan,
store, runner)."""
