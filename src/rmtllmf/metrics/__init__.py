"""The paper's metrics.

* :mod:`~rmtllmf.metrics.accuracy`: normalized accuracy and gap recovery;
* :mod:`~rmtllmf.metrics.disentanglement`: the weight disentanglement error ξ(λ), eqs. 7-8;
* :mod:`~rmtllmf.metrics.hypothesis`: the logit hypothesis test of eqs. 9-12 and the rejection
  rate it predicts (eq. 12, :func:`predicted_rejection_rate`).

Pairwise cosine similarity of task vectors lives with the vectors
(:func:`rmtllmf.fusion.cosine_matrix`).
"""

from rmtllmf.metrics.accuracy import gap_recovery, normalized_accuracy, recovered_fraction
from rmtllmf.metrics.disentanglement import WdeResult, weight_disentanglement_error
from rmtllmf.metrics.hypothesis import (
    HypothesisTest,
    jacobian_sq_norm,
    logit_hypothesis_test,
    paper_ratio_statistic,
    predicted_rejection_rate,
    relative_logit_deviation,
)

__all__ = [
    "HypothesisTest",
    "WdeResult",
    "gap_recovery",
    "jacobian_sq_norm",
    "logit_hypothesis_test",
    "normalized_accuracy",
    "paper_ratio_statistic",
    "predicted_rejection_rate",
    "recovered_fraction",
    "relative_logit_deviation",
    "weight_disentanglement_error",
]
