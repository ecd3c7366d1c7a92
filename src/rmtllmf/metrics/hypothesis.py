"""The logit hypothesis test of paper eqs. 9-12.

H0: the channel noise does not significantly change the merged model's predictions. With
``z_u(x)`` the logits of the undisturbed merged model (clean task vectors) and ``z_d(x)`` those
of the disturbed one (received vectors), eq. 9 gives the parameter error
``Δθ = Σ_q ε_q`` with ``ε_q = λ_N ε̃_q`` and eq. 10 the first-order logit change
``z_d ≈ z_u + J_θ Σ_q ε_q``.

Statistics
----------
* ``paper`` (eq. 10's ``R(x) = z_u(x) / z_d(x)``, per logit): ``|R_c(x) - 1|``. It is ill-posed:
  a logit near zero makes the ratio explode whatever the noise. Kept for comparison.
* ``robust`` (the default): the relative logit deviation
  ``r(x) = ||z_d(x) - z_u(x)||_2 / ||z_u(x)||_2``. For a scalar logit it equals
  ``|R - 1| · |z_d / z_u|``, the same to first order, and it never divides by one small logit.

Threshold (eq. 11)
------------------
With ``ε̃_q`` zero-mean, white, of per-entry variance ``μ_q``, ``E||J Σ_q ε_q||² =
λ_N² (Σ_q μ_q) ||J(x)||_F²``, so eq. 11 reads
``Var[r(x)] ≈ λ_N² Σ_q μ_q ||J(x)||_F² / ||z_u(x)||²`` (per logit ``c``:
``λ_N² Σ_q μ_q ||J_c(x)||² / z_{u,c}(x)²``; the paper folds ``λ_N`` into ``ε_q``) and
``T(x) = z_β sqrt(Var)`` with ``z_β = Φ⁻¹(1 - β)``. ``||J(x)||_F²`` is estimated without
forming ``J`` by Hutchinson's identity ``E_v ||J v||² = ||J||_F²`` over Gaussian probes ``v``,
each a Jacobian-vector product (:func:`jacobian_sq_norm`).

The threshold is set at a *reference* noise level ``Σμ_ref`` (what the operator tolerates,
e.g. the ideal link's), not at the run's own ``Σμ``: a threshold that scaled with the actual
noise would make the rejection rate constant to first order, and eq. 12
(``Pr(|R - 1| ≤ T) → 1`` as ``Σ μ_q → 0``) would say nothing. The measured rejection rate of
H0 as a function of ``Σ μ_q`` is then the paper's claim made testable.

Prediction (eq. 12)
-------------------
Under the same first-order model a logit's deviation over its standard deviation at ``Σμ_ref``
is ``N(0, Σμ/Σμ_ref)``, so the rejection rate is ``2 (1 - Φ(z_β sqrt(Σμ_ref / Σμ)))`` whatever
``x``, ``J`` and ``λ_N`` (:func:`predicted_rejection_rate`): ``2β`` at ``Σμ = Σμ_ref``, 0 as
``Σμ → 0``, which is eq. 12. This holds per logit for ``paper`` and for ``robust`` with one
logit; ``robust`` over ``C`` logits whose Jacobian rows are orthogonal with equal norms has
``||J ε||² ∝ χ²_C`` and rate ``Pr(χ²_C > C z_β² Σμ_ref / Σμ)`` (``n_logits = C``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal, overload

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.stats import chi2
from torch.nn.attention import SDPBackend, sdpa_kernel

from rmtllmf.errors import InputError

Statistic = Literal["robust", "paper"]


def relative_logit_deviation(z_u: torch.Tensor, z_d: torch.Tensor) -> torch.Tensor:
    """Eqs. 10-11, robust statistic: ``r(x) = ||z_d - z_u|| / ||z_u||`` per sample (rows of
    ``(B, C)`` logits); to first order ``|R(x) - 1|`` for a scalar logit."""
    out: torch.Tensor = (z_d - z_u).norm(dim=-1) / z_u.norm(dim=-1).clamp_min(1e-12)
    return out


def paper_ratio_statistic(z_u: torch.Tensor, z_d: torch.Tensor) -> torch.Tensor:
    """Eq. 10's statistic, the paper's ``|R(x) - 1| = |z_u / z_d - 1|`` per logit (``(B, C)``)."""
    out: torch.Tensor = (z_u / z_d - 1.0).abs()
    return out


def jacobian_sq_norm(
    fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    params: Mapping[str, torch.Tensor],
    *,
    probes: int = 8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Eqs. 10-11: Hutchinson estimate of ``||J_c(x)||²`` (``J_θ`` of eq. 10) per sample and
    logit, ``(B, C)``.

    ``fn(params)`` returns ``(B, C)`` logits; ``J`` is their Jacobian with respect to the
    tensors in ``params`` (the ones the channel perturbs). Each probe ``v ~ N(0, I)`` costs one
    forward-mode JVP; ``E_v[(J v)_c²] = ||J_c||²`` exactly, the estimate's relative standard
    error is ``sqrt(2 / probes)``.
    """
    if probes < 1:
        raise InputError(f"probes must be >= 1, got {probes}")
    primals = {k: v.detach() for k, v in params.items()}
    total: torch.Tensor | None = None
    for _ in range(probes):
        tangents = {
            k: torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in primals.items()
        }
        # forward AD has no rule for the fused CPU attention kernels: use the math one
        with sdpa_kernel(SDPBackend.MATH):
            jv = torch.func.jvp(fn, (primals,), (tangents,))[1]
        sq = jv.detach() ** 2
        total = sq if total is None else total + sq
    assert total is not None
    return total / probes


@dataclass(frozen=True)
class HypothesisTest:
    """Eqs. 11-12 on a batch: the statistic and the threshold ``T`` per sample (or per logit)."""

    statistic: NDArray[np.float64]
    threshold: NDArray[np.float64]
    sum_mu: float
    sum_mu_ref: float
    beta: float
    form: Statistic

    @property
    def rejection_rate(self) -> float:
        """Eq. 12, measured: share of samples (``robust``) or logits (``paper``) where H0 is
        rejected, ``statistic > T``."""
        return float(np.mean(self.statistic > self.threshold))


def logit_hypothesis_test(
    z_u: torch.Tensor,
    z_d: torch.Tensor,
    jac_sq: torch.Tensor,
    *,
    lambda_n: float,
    sum_mu: float,
    sum_mu_ref: float,
    beta: float = 0.05,
    form: Statistic = "robust",
) -> HypothesisTest:
    """Eq. 11: test H0 on logits ``z_u`` (undisturbed) vs ``z_d`` (disturbed), both ``(B, C)``,
    with ``T = z_β sqrt(Var)`` and ``Var`` of eq. 11 at ``sum_mu_ref``.

    ``jac_sq`` is ``||J_c(x)||²`` (``(B, C)``, :func:`jacobian_sq_norm`), ``sum_mu`` the run's
    ``Σ_q μ_q`` (reported), ``sum_mu_ref`` the reference noise level that sets ``T``.
    """
    if z_u.shape != z_d.shape or z_u.shape != jac_sq.shape or z_u.ndim != 2:
        raise InputError(
            f"z_u {tuple(z_u.shape)}, z_d {tuple(z_d.shape)} and jac_sq {tuple(jac_sq.shape)} "
            "must all be (batch, classes)"
        )
    if not 0 < beta < 1:
        raise InputError(f"significance level beta must be in (0, 1), got {beta}")
    if sum_mu_ref <= 0:
        raise InputError(f"sum_mu_ref must be > 0 (the tolerated noise), got {sum_mu_ref}")
    z_beta = NormalDist().inv_cdf(1.0 - beta)
    scale = lambda_n**2 * sum_mu_ref
    if form == "robust":
        stat = relative_logit_deviation(z_u, z_d)
        var = scale * jac_sq.sum(-1) / (z_u**2).sum(-1).clamp_min(1e-24)
    elif form == "paper":
        stat = paper_ratio_statistic(z_u, z_d)
        var = scale * jac_sq / (z_u**2).clamp_min(1e-24)
    else:
        raise InputError(f"unknown statistic {form!r}; use 'robust' or 'paper'")
    return HypothesisTest(
        statistic=stat.double().numpy(),
        threshold=(z_beta * var.sqrt()).double().numpy(),
        sum_mu=float(sum_mu),
        sum_mu_ref=float(sum_mu_ref),
        beta=beta,
        form=form,
    )


@overload
def predicted_rejection_rate(
    sum_mu: float, sum_mu_ref: float, *, beta: float = 0.05, n_logits: int = 1
) -> float: ...


@overload
def predicted_rejection_rate(
    sum_mu: NDArray[np.float64], sum_mu_ref: float, *, beta: float = 0.05, n_logits: int = 1
) -> NDArray[np.float64]: ...


def predicted_rejection_rate(
    sum_mu: float | NDArray[np.float64],
    sum_mu_ref: float,
    *,
    beta: float = 0.05,
    n_logits: int = 1,
) -> float | NDArray[np.float64]:
    """Eq. 12, predicted: the rate ``1 - Pr(|R(x) - 1| ≤ T)`` at which the test rejects H0.

    To first order (eq. 10) with ``ε̃_q`` zero-mean Gaussian, white, of per-entry variance
    ``μ_q``, and ``T`` set at ``sum_mu_ref`` (:func:`logit_hypothesis_test`), the rate is
    ``Pr(χ²_k > k z_β² Σμ_ref / Σμ)`` with ``k = n_logits`` and ``z_β = Φ⁻¹(1 - β)``. For
    ``n_logits = 1`` (the ``paper`` statistic, per logit; ``robust`` on one logit) that is
    ``2 (1 - Φ(z_β sqrt(Σμ_ref / Σμ)))``: ``2β`` at ``Σμ = Σμ_ref``, 0 at ``Σμ = 0``, 1 as
    ``Σμ → ∞``. ``n_logits = C > 1`` is the ``robust`` statistic over ``C`` logits whose
    Jacobian rows are orthogonal with equal norms (``J Jᵀ ∝ I``, e.g. a linear head on noisy
    weights); other Jacobians give a weighted sum of ``χ²_1`` instead.

    ``sum_mu`` (``Σ_q μ_q``, a float or an array of them, each ``>= 0``) gives a float or an
    array of the same shape.
    """
    if not (np.isfinite(sum_mu_ref) and sum_mu_ref > 0):
        raise InputError(
            f"sum_mu_ref must be finite and > 0 (the tolerated noise), got {sum_mu_ref}"
        )
    if not 0 < beta < 1:
        raise InputError(f"significance level beta must be in (0, 1), got {beta}")
    if n_logits < 1:
        raise InputError(f"n_logits must be >= 1, got {n_logits}")
    mu = np.asarray(sum_mu, dtype=np.float64)
    if np.any(np.isnan(mu)) or np.any(mu < 0):
        raise InputError("sum_mu must be >= 0 (a sum of MSEs); got a negative value or NaN")
    z_beta = NormalDist().inv_cdf(1.0 - beta)
    if z_beta < 0:  # beta > 1/2: T < 0 <= statistic, every sample is rejected
        rate = np.ones_like(mu)
    else:
        positive = mu > 0
        level = np.full_like(mu, np.inf)  # Σμ = 0: no deviation, nothing exceeds T >= 0
        level[positive] = n_logits * z_beta**2 * sum_mu_ref / mu[positive]
        rate = np.asarray(chi2.sf(level, n_logits), dtype=np.float64)
    if isinstance(sum_mu, np.ndarray):
        return rate
    return float(rate)
