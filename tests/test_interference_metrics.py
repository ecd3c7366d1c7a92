"""WDE (eqs. 7-8) against a brute-force loop; the hypothesis test (eqs. 9-12) and its predicted
rejection rate (eq. 12) against closed forms and Monte Carlo on linear models, where the
first-order expansion of eq. 10 is exact."""

from __future__ import annotations

from statistics import NormalDist

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rmtllmf.errors import InputError
from rmtllmf.fusion import TaskVector
from rmtllmf.metrics import (
    jacobian_sq_norm,
    logit_hypothesis_test,
    paper_ratio_statistic,
    predicted_rejection_rate,
    relative_logit_deviation,
    weight_disentanglement_error,
)
from rmtllmf.report.figures import rejection


def _linear_setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(6, 4, generator=g), "step": torch.tensor(3)}
    vecs = [TaskVector({"w": 0.8 * torch.randn(6, 4, generator=g)}) for _ in range(3)]
    data = {t: torch.randn(50, 6, generator=g) for t in "abc"}

    def predict(state, task):
        return (data[task] @ state["w"]).argmax(-1).numpy()

    return base, vecs, data, predict


def test_wde_matches_brute_force():
    base, vecs, data, predict = _linear_setup()
    lam_n, lam_i = 0.4, (1.0, 0.7, 0.5)
    out = weight_disentanglement_error(
        predict, base, "abc", vecs, lambda_merged=lam_n, lambda_individual=lam_i
    )
    merged_w = base["w"] + lam_n * sum(v.tensors["w"] for v in vecs)
    total = 0.0
    for task, vec, li in zip("abc", vecs, lam_i, strict=True):
        x = data[task]
        disagree = 0
        for row in x:  # one sample at a time, no shared code with the library
            alone = int(torch.argmax(row @ (base["w"] + li * vec.tensors["w"])))
            multi = int(torch.argmax(row @ merged_w))
            disagree += alone != multi
        assert out.per_task[task] == pytest.approx(disagree / len(x))
        total += disagree / len(x)
    assert out.total == pytest.approx(total)
    assert out.mean == pytest.approx(total / 3)


def test_wde_is_zero_for_one_task_at_its_own_lambda_and_grows_with_noise():
    base, vecs, _, predict = _linear_setup(1)
    assert (
        weight_disentanglement_error(
            predict, base, "a", vecs[:1], lambda_merged=0.6, lambda_individual=0.6
        ).total
        == 0.0
    )
    g = torch.Generator().manual_seed(5)
    noisy = [TaskVector({"w": v.tensors["w"] + 3 * torch.randn(6, 4, generator=g)}) for v in vecs]
    clean = weight_disentanglement_error(predict, base, "abc", vecs, lambda_merged=0.5)
    hit = weight_disentanglement_error(
        predict, base, "abc", vecs, lambda_merged=0.5, merged_vectors=noisy
    )
    assert hit.total > clean.total


def test_wde_bad_input():
    base, vecs, _, predict = _linear_setup()
    with pytest.raises(InputError, match="one task vector per task"):
        weight_disentanglement_error(predict, base, "ab", vecs, lambda_merged=0.3)
    with pytest.raises(InputError, match="lambda_individual"):
        weight_disentanglement_error(
            predict, base, "abc", vecs, lambda_merged=0.3, lambda_individual=(1.0, 1.0)
        )


def test_jacobian_sq_norm_matches_exact_jacobian():
    torch.manual_seed(0)
    x = torch.randn(5, 3)
    params = {"a": torch.randn(3, 4), "b": torch.randn(4)}

    def fn(p):
        return torch.tanh(x @ p["a"] + p["b"])

    jac = torch.func.jacrev(fn)(params)  # (5, 4, *param shape)
    exact = sum((j.reshape(5, 4, -1) ** 2).sum(-1) for j in jac.values())
    est = jacobian_sq_norm(fn, params, probes=4000, generator=torch.Generator().manual_seed(1))
    # relative standard error sqrt(2 / 4000) = 2.2%: 5 sigma
    np.testing.assert_allclose(est.numpy(), exact.numpy(), rtol=0.12)


def test_statistics_closed_forms():
    z_u = torch.tensor([[3.0, 4.0]])
    z_d = torch.tensor([[3.0, 5.0]])
    assert float(relative_logit_deviation(z_u, z_d)[0]) == pytest.approx(1 / 5)
    np.testing.assert_allclose(paper_ratio_statistic(z_u, z_d).numpy(), [[0.0, 0.2]], rtol=1e-6)


def _scalar_linear_test(ratio: float, n: int = 20000, seed: int = 0):
    """Scalar logit z = <x, w>; noise eps ~ N(0, lam^2 mu I) on w: eq. 10 is exact."""
    g = torch.Generator().manual_seed(seed)
    d, lam, mu_ref = 8, 0.5, 0.02
    mu = ratio * mu_ref
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    eps = lam * mu**0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)  # one draw per x
    z_u = (x @ w)[:, None]
    z_d = ((x * (w + eps)).sum(-1))[:, None]
    jac_sq = (x**2).sum(-1, keepdim=True)  # ||dz/dw||^2 = ||x||^2
    return logit_hypothesis_test(
        z_u, z_d, jac_sq, lambda_n=lam, sum_mu=mu, sum_mu_ref=mu_ref, beta=0.05
    )


def test_rejection_rate_at_the_reference_noise_is_two_beta():
    # r / sqrt(Var) = |N(0, 1)|, so Pr(r > z_beta sqrt(Var)) = 2 beta
    assert _scalar_linear_test(1.0).rejection_rate == pytest.approx(0.10, abs=0.01)
    assert predicted_rejection_rate(0.02, 0.02, beta=0.05) == pytest.approx(0.10, abs=1e-12)


@settings(max_examples=15, deadline=None)
@given(st.floats(0.05, 20.0))
def test_predicted_rejection_rate_matches_monte_carlo_and_the_closed_form(ratio):
    # sum_mu = ratio * sum_mu_ref: Pr = 2 (1 - Phi(z_beta / sqrt(ratio))); -> 0 as sum_mu -> 0
    mu_ref = 0.02
    predicted = predicted_rejection_rate(ratio * mu_ref, mu_ref, beta=0.05)
    z = NormalDist().inv_cdf(0.95)
    assert predicted == pytest.approx(2 * (1 - NormalDist().cdf(z / ratio**0.5)), abs=1e-12)
    assert _scalar_linear_test(ratio).rejection_rate == pytest.approx(predicted, abs=0.015)


def _multi_logit_test(ratio: float, classes: int, n: int = 20000, seed: int = 0):
    """Linear head z = x W with C logits, noise on W: J J^T = ||x||^2 I, the robust statistic
    pools C independent Gaussians."""
    g = torch.Generator().manual_seed(seed)
    d, lam, mu_ref = 6, 0.7, 0.01
    mu = ratio * mu_ref
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, classes, generator=g, dtype=torch.float64)
    eps = lam * mu**0.5 * torch.randn(n, d, classes, generator=g, dtype=torch.float64)
    z_u = x @ w
    z_d = z_u + torch.einsum("nd,ndc->nc", x, eps)
    jac_sq = (x**2).sum(-1, keepdim=True).expand(n, classes)  # ||dz_c/dW||^2 = ||x||^2
    return logit_hypothesis_test(
        z_u, z_d, jac_sq, lambda_n=lam, sum_mu=mu, sum_mu_ref=mu_ref, beta=0.05
    )


@pytest.mark.parametrize("ratio", [0.6, 1.0, 4.0])
def test_predicted_rejection_rate_of_the_robust_statistic_over_several_logits(ratio):
    mu_ref = 0.01
    z = NormalDist().inv_cdf(0.95)
    two = predicted_rejection_rate(ratio * mu_ref, mu_ref, n_logits=2)
    assert two == pytest.approx(np.exp(-(z**2) / ratio), abs=1e-12)  # chi2_2 tail: exp(-x/2)
    for classes in (2, 5):
        measured = _multi_logit_test(ratio, classes).rejection_rate
        predicted = predicted_rejection_rate(ratio * mu_ref, mu_ref, n_logits=classes)
        assert measured == pytest.approx(predicted, abs=0.015)  # 4 standard errors at 0.5


def test_predicted_rejection_rate_limits_and_arrays():
    mu = np.array([0.0, 0.05, 0.1, 1.0, 10.0, 1e12])
    rates = predicted_rejection_rate(mu, 1.0, beta=0.05)
    assert isinstance(rates, np.ndarray)
    assert rates.shape == mu.shape
    assert rates[0] == 0.0  # eq. 12: no noise, H0 always holds
    assert np.all(np.diff(rates) > 0)
    assert rates[-1] == pytest.approx(1.0, abs=1e-3)
    assert float(rates[3]) == pytest.approx(predicted_rejection_rate(1.0, 1.0))
    assert isinstance(predicted_rejection_rate(0.5, 1.0), float)
    assert predicted_rejection_rate(0.5, 1.0, beta=0.7) == 1.0  # z_beta < 0: T < 0
    for kwargs, match in (
        ({"sum_mu": -1.0, "sum_mu_ref": 1.0}, "sum_mu must"),
        ({"sum_mu": float("nan"), "sum_mu_ref": 1.0}, "sum_mu must"),
        ({"sum_mu": 1.0, "sum_mu_ref": 0.0}, "sum_mu_ref"),
        ({"sum_mu": 1.0, "sum_mu_ref": 1.0, "beta": 1.0}, "beta"),
        ({"sum_mu": 1.0, "sum_mu_ref": 1.0, "n_logits": 0}, "n_logits"),
    ):
        with pytest.raises(InputError, match=match):
            predicted_rejection_rate(**kwargs)


def test_rejection_rate_grows_with_sum_mu():
    rates = [_scalar_linear_test(r).rejection_rate for r in (0.01, 0.3, 1.0, 5.0)]
    assert rates[0] < 1e-3
    assert rates == sorted(rates)


def test_rejection_figure_draws_the_eq12_prediction():
    points = [
        {"sum_mu": s, "sum_mu_ref": 0.04, "reject_robust": r, "reject_paper": r}
        for s, r in ((0.01, 0.0), (0.04, 0.1), (0.4, 0.7))
    ]
    fig = rejection(points, beta=0.05)
    ax = fig.axes[0]
    (line,) = [ln for ln in ax.get_lines() if "eq. 12" in str(ln.get_label())]
    xs, ys = (np.asarray(v, dtype=np.float64) for v in line.get_data())
    assert xs.min() <= 0.01 and xs.max() >= 0.4
    z = NormalDist().inv_cdf(0.95)
    expected = [2 * (1 - NormalDist().cdf(z * (0.04 / x) ** 0.5)) for x in xs]
    np.testing.assert_allclose(ys, expected, atol=1e-12)
    assert "eq. 12" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
    plt.close(fig)


def test_hypothesis_bad_input():
    z = torch.ones(3, 2)
    with pytest.raises(InputError, match="batch, classes"):
        logit_hypothesis_test(z, z, torch.ones(3, 3), lambda_n=1, sum_mu=1, sum_mu_ref=1)
    with pytest.raises(InputError, match="beta"):
        logit_hypothesis_test(z, z, z, lambda_n=1, sum_mu=1, sum_mu_ref=1, beta=1.5)
    with pytest.raises(InputError, match="sum_mu_ref"):
        logit_hypothesis_test(z, z, z, lambda_n=1, sum_mu=1, sum_mu_ref=0)
