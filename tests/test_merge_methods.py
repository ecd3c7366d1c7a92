"""Merge methods in memory: task arithmetic (eq. 6), average, TIES and DARE against formulas
written here from their papers and against FusionBench; the method registry, input errors and
the choice of lambda on validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from merge_helpers import random_models as _models
from rmtllmf.errors import InputError
from rmtllmf.fusion import (
    MERGE_METHODS,
    MergeConfig,
    ParamFilter,
    TaskVector,
    linear_weights,
    merge_checkpoints,
    merge_task_vectors,
    register,
    select_lambda,
)


def _ties_reference(taus: np.ndarray, density: float, scaling: float) -> np.ndarray:
    """TIES from the paper's three steps on the stacked flat task vectors (numpy)."""
    trimmed = taus.copy()
    d = taus.shape[1]
    for i in range(taus.shape[0]):
        # entries at or above the (d - floor(d * density))-th smallest magnitude (1-based), the
        # definition of the TIES reference code and FusionBench: floor(d * density) + 1 entries
        cut = np.sort(np.abs(taus[i]))[d - int(d * density) - 1]
        trimmed[i][np.abs(taus[i]) < cut] = 0.0
    elected = np.sign(trimmed.sum(axis=0))
    elected[elected == 0] = np.sign(elected.sum())
    agree = np.where(elected > 0, trimmed > 0, trimmed < 0)
    counts = np.maximum(agree.sum(axis=0), 1)
    return scaling * (trimmed * agree).sum(axis=0) / counts


def test_registry_lists_every_method():
    assert {"task-arithmetic", "average", "ties", "dare"} <= set(MERGE_METHODS)
    with pytest.raises(ValueError, match="unknown merge method 'nope'"):
        MergeConfig(method="nope")


def test_each_method_validates_its_own_options():
    assert MergeConfig(method="ties").options == {"density": 0.2, "merge": "mean"}
    assert MergeConfig(method="dare", options={"combine": "ties"}).options["combine"] == "ties"
    with pytest.raises(ValueError, match="'task-arithmetic' takes no options"):
        MergeConfig(options={"density": 0.2})
    with pytest.raises(ValueError, match=r"'ties' takes density, merge.*density"):
        MergeConfig(method="ties", options={"density": 1.5})
    with pytest.raises(ValueError, match=r"'ties' takes density, merge.*drop_rate"):
        MergeConfig(method="ties", options={"drop_rate": 0.5})


def test_the_registry_says_which_methods_are_linear():
    assert linear_weights(MergeConfig(scaling=0.4), 3) == [0.4, 0.4, 0.4]
    assert linear_weights(MergeConfig(method="average"), 4) == [0.25] * 4
    assert linear_weights(MergeConfig(method="ties"), 2) is None

    @register("half-sum", "0.5 * sum_q tau_q", linear=lambda config, n: [0.5] * n)
    def half_sum(taus, ctx):
        return 0.5 * torch.stack(list(taus)).sum(dim=0)

    try:
        assert linear_weights(MergeConfig(method="half-sum"), 2) == [0.5, 0.5]
        base, fts = _models()
        tvs = [TaskVector.from_models(base, ft) for ft in fts]
        merged = merge_task_vectors(base, tvs, MergeConfig(method="half-sum"))
        k = next(iter(tvs[0].tensors))
        torch.testing.assert_close(merged[k], base[k] + 0.5 * sum(tv.tensors[k] for tv in tvs))
    finally:
        del MERGE_METHODS["half-sum"]


def test_task_arithmetic_and_average():
    base, fts = _models()
    tvs = [TaskVector.from_models(base, ft) for ft in fts]
    merged = merge_task_vectors(base, tvs, MergeConfig(scaling=0.4))
    expected = base["a.weight"] + 0.4 * sum(ft["a.weight"] - base["a.weight"] for ft in fts)
    torch.testing.assert_close(merged["a.weight"], expected)
    assert merged["b.weight"].dtype == torch.bfloat16
    torch.testing.assert_close(merged["ids"], base["ids"])
    avg = merge_task_vectors(base, tvs, MergeConfig(method="average"))
    torch.testing.assert_close(avg["a.bias"], torch.stack([ft["a.bias"] for ft in fts]).mean(0))


def test_ties_matches_the_paper_steps():
    base, fts = _models(4)
    tvs = [TaskVector.from_models(base, ft) for ft in fts]
    cfg = MergeConfig(method="ties", scaling=0.7, options={"density": 0.3})
    merged = merge_task_vectors(base, tvs, cfg)
    flat = np.stack([tv.flatten() for tv in tvs]).astype(np.float64)
    expected = _ties_reference(flat, 0.3, 0.7)
    got = TaskVector.from_models(base, merged).flatten()
    # bf16 storage of b.weight rounds the merged values; compare the float32 part exactly
    n = tvs[0].layout.segments[2]
    np.testing.assert_allclose(got[:n], expected[:n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("peer", ["paper", "fusion_bench"])
def test_dare_ties_is_ties_over_the_dropped_vectors(peer):
    """DARE combined with TIES trims, elects and merges the dropped and rescaled task vectors,
    its thresholds taken over their magnitudes, as FusionBench's DareTiesMerging does (random
    drop, then ``ties_merging`` of the flat dropped vectors). Thresholds of the raw task vectors
    would keep ``floor(d * density) + 1`` of the raw entries instead, about half of them dropped:
    a different merge."""
    from rmtllmf.fusion.methods import _dare_drop, dare_seed

    base, fts = _models(4, seed=2)
    keep = [k for k, v in base.items() if v.dtype == torch.float32]
    base = {k: base[k] for k in keep}
    fts = [{k: ft[k] for k in keep} for ft in fts]
    tvs = [TaskVector.from_models(base, ft) for ft in fts]
    cfg = MergeConfig(
        method="dare", scaling=0.6, options={"combine": "ties", "density": 0.2, "drop_rate": 0.5}
    )
    got = TaskVector.from_models(base, merge_task_vectors(base, tvs, cfg)).flatten()
    dropped = np.stack(
        [
            TaskVector(
                {
                    k: _dare_drop(t, cfg.options["drop_rate"], dare_seed(cfg, i, k), 0)
                    for k, t in tv.tensors.items()
                }
            ).flatten()
            for i, tv in enumerate(tvs)
        ]
    )
    if peer == "paper":
        expected = _ties_reference(dropped.astype(np.float64), cfg.options["density"], cfg.scaling)
    else:
        pytest.importorskip("fusion_bench", reason="peer check needs `pip install fusion-bench`")
        from fusion_bench.method.ties_merging.ties_merging_utils import ties_merging

        merged = ties_merging(torch.from_numpy(dropped), reset_thresh=20, merge_func="mean")
        expected = cfg.scaling * merged.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_dare_is_reproducible_and_unbiased():
    base, fts = _models(2)
    tvs = [TaskVector.from_models(base, ft) for ft in fts]
    cfg = MergeConfig(method="dare", scaling=1.0, options={"drop_rate": 0.5, "seed": 3})
    a = merge_task_vectors(base, tvs, cfg)
    b = merge_task_vectors(base, tvs, cfg)
    torch.testing.assert_close(a["a.weight"], b["a.weight"])
    ta = merge_task_vectors(base, tvs, MergeConfig(scaling=1.0))
    keep_all = MergeConfig(method="dare", scaling=1.0, options={"drop_rate": 0.0})
    none = merge_task_vectors(base, tvs, keep_all)
    torch.testing.assert_close(none["a.weight"], ta["a.weight"])
    # unbiased: averaged over seeds the drop-and-rescale delta approaches the full delta

    def dare_at_seed(seed: int) -> MergeConfig:
        return MergeConfig(method="dare", scaling=1.0, options={"drop_rate": 0.5, "seed": seed})

    deltas = [
        merge_task_vectors(base, tvs, dare_at_seed(s))["a.weight"] - base["a.weight"]
        for s in range(200)
    ]
    mean = torch.stack(deltas).mean(0)
    full = ta["a.weight"] - base["a.weight"]
    assert torch.linalg.norm(mean - full) < 0.15 * torch.linalg.norm(full)
    dropped = (deltas[0] == 0).float().mean().item()
    assert dropped == pytest.approx(0.25, abs=0.1)  # both tasks dropped: p^2


def test_filter_keeps_excluded_parameters_at_base(tmp_path):
    base, fts = _models(2)
    tvs = [TaskVector.from_models(base, ft) for ft in fts]
    merged = merge_task_vectors(base, tvs, MergeConfig(), ParamFilter(exclude=("a.bias",)))
    torch.testing.assert_close(merged["a.bias"], base["a.bias"])
    assert not torch.equal(merged["a.weight"], base["a.weight"])


def test_empty_model_list_is_a_clear_error(tmp_path):
    base, _ = _models(1)
    save_file(base, tmp_path / "base.safetensors")
    with pytest.raises(InputError, match="no fine-tuned models"):
        merge_checkpoints(
            tmp_path / "base.safetensors", [], tmp_path / "o.safetensors", MergeConfig()
        )
    with pytest.raises(InputError, match="no task vectors"):
        merge_task_vectors(base, [], MergeConfig())


def test_select_lambda_takes_the_validation_argmax():
    search = select_lambda(lambda lam: -((lam - 0.35) ** 2))
    assert search.best == pytest.approx(0.35)
    assert search.grid.size == 21
    assert select_lambda(lambda lam: 1.0, grid=[0.5, 0.2]).best == 0.5


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.b = torch.nn.Linear(16, 4)


@pytest.mark.parametrize("method", ["task-arithmetic", "ties"])
def test_agrees_with_fusionbench(tmp_path, method):
    fb = pytest.importorskip("fusion_bench", reason="peer check needs `pip install fusion-bench`")
    from fusion_bench.method import TaskArithmeticAlgorithm, TiesMergingAlgorithm

    torch.manual_seed(0)
    models = [_Tiny() for _ in range(4)]
    base = models[0]
    for m in models[1:]:
        m.load_state_dict({k: v + 0.02 * torch.randn_like(v) for k, v in base.state_dict().items()})
    paths = []
    for i, m in enumerate(models):
        paths.append(tmp_path / f"m{i}.safetensors")
        save_file(m.state_dict(), paths[-1])
    pool = {"_pretrained_": base, **{f"t{i}": m for i, m in enumerate(models[1:])}}
    if method == "ties":
        peer = TiesMergingAlgorithm(
            scaling_factor=0.6, threshold=20, remove_keys=[], merge_func="mean"
        )
        cfg = MergeConfig(method="ties", scaling=0.6, options={"density": 0.2, "merge": "mean"})
    else:
        peer = TaskArithmeticAlgorithm(scaling_factor=0.3)
        cfg = MergeConfig(scaling=0.3)
    expected = peer.run(pool).state_dict()
    out = tmp_path / "ours.safetensors"
    merge_checkpoints(paths[0], paths[1:], out, cfg)
    ours = load_file(out)
    assert fb is not None
    for k, v in expected.items():
        torch.testing.assert_close(ours[k], v, rtol=1e-5, atol=1e-6)
