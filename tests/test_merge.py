"""Merge methods against formulas written here from their papers, and against FusionBench."""

from __future__ import annotations

import itertools
from contextlib import ExitStack

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from rmtllmf.errors import InputError
from rmtllmf.fusion import (
    MERGE_METHODS,
    MergeConfig,
    ParamFilter,
    TaskVector,
    merge_checkpoints,
    merge_task_vectors,
    select_lambda,
)


def _models(n_tasks=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = {
        "a.weight": torch.randn(16, 8, generator=g),
        "a.bias": torch.randn(16, generator=g),
        "ids": torch.arange(4),
        "b.weight": torch.randn(4, 16, generator=g).to(torch.bfloat16),
    }
    fts = []
    for _ in range(n_tasks):
        fts.append(
            {
                k: (v.float() + 0.05 * torch.randn(v.shape, generator=g)).to(v.dtype)
                if v.is_floating_point()
                else v.clone()
                for k, v in base.items()
            }
        )
    return base, fts


def _save_models(tmp_path, base, fts) -> list:
    """``base.safetensors`` and ``0.safetensors``, ``1.safetensors``, ... for the fine-tuned
    models, in ``tmp_path``; the fine-tuned paths."""
    save_file(base, tmp_path / "base.safetensors")
    paths = [tmp_path / f"{i}.safetensors" for i in range(len(fts))]
    for p, ft in zip(paths, fts, strict=True):
        save_file(ft, p)
    return paths


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
    with pytest.raises(InputError, match="unknown merge method 'nope'"):
        merge_task_vectors({}, [TaskVector({})], MergeConfig(method="nope"))


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
    cfg = MergeConfig(method="ties", density=0.3, scaling=0.7)
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
    from rmtllmf.fusion.merge import _dare_drop, dare_seed

    base, fts = _models(4, seed=2)
    keep = [k for k, v in base.items() if v.dtype == torch.float32]
    base = {k: base[k] for k in keep}
    fts = [{k: ft[k] for k in keep} for ft in fts]
    tvs = [TaskVector.from_models(base, ft) for ft in fts]
    cfg = MergeConfig(method="dare", dare_combine="ties", density=0.2, drop_rate=0.5, scaling=0.6)
    got = TaskVector.from_models(base, merge_task_vectors(base, tvs, cfg)).flatten()
    dropped = np.stack(
        [
            TaskVector(
                {
                    k: _dare_drop(t, cfg.drop_rate, dare_seed(cfg, i, k), 0)
                    for k, t in tv.tensors.items()
                }
            ).flatten()
            for i, tv in enumerate(tvs)
        ]
    )
    if peer == "paper":
        expected = _ties_reference(dropped.astype(np.float64), cfg.density, cfg.scaling)
    else:
        pytest.importorskip("fusion_bench", reason="peer check needs `pip install fusion-bench`")
        from fusion_bench.method.ties_merging.ties_merging_utils import ties_merging

        merged = ties_merging(torch.from_numpy(dropped), reset_thresh=20, merge_func="mean")
        expected = cfg.scaling * merged.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_dare_is_reproducible_and_unbiased():
    base, fts = _models(2)
    tvs = [TaskVector.from_models(base, ft) for ft in fts]
    cfg = MergeConfig(method="dare", drop_rate=0.5, scaling=1.0, seed=3)
    a = merge_task_vectors(base, tvs, cfg)
    b = merge_task_vectors(base, tvs, cfg)
    torch.testing.assert_close(a["a.weight"], b["a.weight"])
    ta = merge_task_vectors(base, tvs, MergeConfig(scaling=1.0))
    none = merge_task_vectors(base, tvs, cfg.model_copy(update={"drop_rate": 0.0}))
    torch.testing.assert_close(none["a.weight"], ta["a.weight"])
    # unbiased: averaged over seeds the drop-and-rescale delta approaches the full delta
    deltas = [
        merge_task_vectors(base, tvs, cfg.model_copy(update={"seed": s}))["a.weight"]
        - base["a.weight"]
        for s in range(200)
    ]
    mean = torch.stack(deltas).mean(0)
    full = ta["a.weight"] - base["a.weight"]
    assert torch.linalg.norm(mean - full) < 0.15 * torch.linalg.norm(full)
    dropped = (deltas[0] == 0).float().mean().item()
    assert dropped == pytest.approx(0.25, abs=0.1)  # both tasks dropped: p^2


@pytest.mark.parametrize(
    "cfg",
    [
        MergeConfig(scaling=0.3),
        MergeConfig(method="ties", density=0.2, scaling=0.5),
        MergeConfig(method="dare", dare_combine="ties", density=0.5, drop_rate=0.3),
        MergeConfig(method="average"),
    ],
)
def test_streaming_merge_from_disk_equals_in_memory(tmp_path, cfg):
    base, fts = _models(3)
    save_file(base, tmp_path / "base.safetensors")
    paths = []
    for i, ft in enumerate(fts):
        paths.append(tmp_path / f"ft{i}.safetensors")
        save_file(ft, paths[-1])
    out = tmp_path / "merged.safetensors"
    merge_checkpoints(tmp_path / "base.safetensors", paths, out, cfg)
    got = load_file(out)
    tvs = [TaskVector.from_models(base, ft) for ft in fts]
    expected = merge_task_vectors(base, tvs, cfg)
    assert set(got) == set(base)  # safetensors stores keys sorted
    for k in base:
        assert got[k].dtype == base[k].dtype
        torch.testing.assert_close(got[k], expected[k])


@pytest.mark.parametrize(
    "cfg",
    [
        MergeConfig(scaling=0.3),
        MergeConfig(method="average"),
        MergeConfig(method="ties", density=0.2, scaling=0.5),
        MergeConfig(method="ties", density=1.0, ties_merge="sum"),
        MergeConfig(method="ties", density=0.5, ties_merge="max"),
        MergeConfig(method="dare", drop_rate=0.3, seed=5),
        MergeConfig(method="dare", dare_combine="ties", density=0.5, drop_rate=0.3),
    ],
)
def test_sliceable_merges_stream_slices_bit_for_bit(tmp_path, monkeypatch, cfg):
    """Slices of 7 entries (dividing no tensor) through the streaming path give the same bits as
    the whole tensors merged in memory, float32 and bfloat16 alike."""
    import rmtllmf.fusion.merge as merge_module

    monkeypatch.setattr(merge_module, "SLICE_ELEMENTS", 7)
    base, fts = _models(3)
    out = tmp_path / "merged.safetensors"
    merge_checkpoints(base, fts, out, cfg)  # state dicts: the streaming path, not the fused one
    expected = merge_task_vectors(base, [TaskVector.from_models(base, ft) for ft in fts], cfg)
    got = load_file(out)
    for k in base:
        assert got[k].dtype == expected[k].dtype
        assert torch.equal(got[k], expected[k]), k


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 3 * 4096), st.lists(st.integers(0, 3 * 4096), max_size=5), st.integers(0, 9))
def test_dare_uniforms_depend_on_position_only(n, cuts, seed):
    """Entries offset .. offset+n-1 drawn in any cut are the same draws as drawn whole."""
    from rmtllmf.fusion.merge import _dare_uniforms

    whole = _dare_uniforms(n, 0, seed)
    bounds = [0, *sorted(c for c in cuts if c <= n), n]
    parts = [_dare_uniforms(b - a, a, seed) for a, b in itertools.pairwise(bounds)]
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(_dare_uniforms(4096, 0, seed), _dare_uniforms(4096, 4096, seed))


def test_sliced_ties_breaks_exact_ties_by_the_whole_tensors_majority(tmp_path, monkeypatch):
    """Entry 0's task vectors cancel (+1, -1, 0), so TIES gives it the majority sign of the
    whole tensor: 13 positive entries against 6 negative, though its own slice (entries 0-6)
    is all negative. With the majority +1 the disjoint mean keeps +1 alone."""
    import rmtllmf.fusion.merge as merge_module

    monkeypatch.setattr(merge_module, "SLICE_ELEMENTS", 7)
    rows = torch.full((19, 3), 0.5)
    rows[:6] = -0.5
    taus = torch.cat([torch.tensor([[1.0, -1.0, 0.0]]), rows])  # (20 entries, 3 models)
    base = {"w": torch.zeros(20)}
    fts = [{"w": taus[:, q].clone()} for q in range(3)]
    cfg = MergeConfig(method="ties", density=1.0, scaling=1.0)
    merge_checkpoints(base, fts, tmp_path / "m.safetensors", cfg)
    got = load_file(tmp_path / "m.safetensors")["w"]
    assert got[0] == 1.0
    torch.testing.assert_close(got[1:], taus[1:, 0], rtol=0, atol=0)  # all three agree: mean


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
        cfg = MergeConfig(method="ties", scaling=0.6, density=0.2, ties_merge="mean")
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


@pytest.mark.parametrize("use_kernel", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_linear_path_crosses_block_boundaries(tmp_path, monkeypatch, threads, use_kernel):
    """The bandwidth path (the compiled kernel, or blocked pread with one BLAS product per
    block) equals the per-tensor formula for every dtype, across job edges, in one thread or
    several."""
    import rmtllmf.fusion.fast.fused as fused_module
    from rmtllmf.fusion.checkpoint import RawSafetensors
    from rmtllmf.fusion.fast import kernel

    if use_kernel and kernel.KERNEL is None:
        pytest.skip("the C kernel is not loaded (not built at install, or RMTLLMF_NO_KERNEL set)")
    monkeypatch.setattr(fused_module, "BLOCK", 37)
    monkeypatch.setattr(fused_module, "KERNEL_CHUNK_BYTES", 200)  # 50 float32 elements
    ran: list[kernel.Jobs] = []
    if kernel.KERNEL is not None:
        real = kernel.KERNEL.run
        monkeypatch.setattr(kernel.KERNEL, "run", lambda *a: ran.append(a[1]) or real(*a))
    base, fts = _models(3)
    g = torch.Generator().manual_seed(1)
    base["c.f64"] = torch.randn(50, generator=g).double()
    base["d.f16"] = torch.randn(90, generator=g).half()
    for ft in fts:
        ft["c.f64"] = base["c.f64"] + 0.05 * torch.randn(50, generator=g).double()
        ft["d.f16"] = (base["d.f16"].float() + 0.05 * torch.randn(90, generator=g)).half()
    paths = _save_models(tmp_path, base, fts)
    out = tmp_path / "m.safetensors"
    files = [tmp_path / "base.safetensors", *paths]
    selected = {k for k, v in base.items() if v.is_floating_point()} - {"a.bias"}
    with ExitStack() as stack:
        raws = [stack.enter_context(RawSafetensors(f)) for f in files]
        order = raws[0].keys()
        fused_module.fused_linear_merge(
            raws, out, order, selected, [0.45] * 3, {}, threads, use_kernel=use_kernel
        )
    if use_kernel:  # every merged dtype went through the kernel, in jobs of 200 bytes or less
        jobs = ran[0]
        assert all(j is jobs for j in ran)  # one job list, shared by the threads
        codes = {kernel.DTYPE_CODES[d] for d in (torch.float32, torch.float64, torch.float16)}
        assert set(jobs.dtypes.tolist()) == codes | {kernel.DTYPE_CODES[torch.bfloat16]}
        assert all(n <= 200 for n in _job_bytes(jobs))
        assert (jobs.dtypes == kernel.DTYPE_CODES[torch.float32]).sum() >= 3  # a.weight: 128
    else:
        assert ran == []
    got = load_file(out)
    assert set(got) == set(order)
    for k, v in base.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        if k not in selected:  # copied byte for byte
            assert torch.equal(got[k], v), k
            continue
        expected = v.double() + 0.45 * sum(ft[k].double() - v.double() for ft in fts)
        torch.testing.assert_close(got[k], expected.to(v.dtype))


def test_merge_checkpoints_takes_the_fused_path(tmp_path, monkeypatch):
    """A task-arithmetic merge of safetensors files runs the fused path and equals the
    in-memory merge."""
    import rmtllmf.fusion.merge as merge_module

    calls = []
    real = merge_module.fused_linear_merge
    monkeypatch.setattr(
        merge_module, "fused_linear_merge", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    base, fts = _models(3)
    paths = _save_models(tmp_path, base, fts)
    out = tmp_path / "m.safetensors"
    cfg = MergeConfig(scaling=0.45)
    merge_checkpoints(tmp_path / "base.safetensors", paths, out, cfg)
    assert calls == [1]
    got = load_file(out)
    expected = merge_task_vectors(base, [TaskVector.from_models(base, ft) for ft in fts], cfg)
    for k in base:  # float32 exact to rounding; bf16 within one ulp (default tolerances)
        torch.testing.assert_close(got[k], expected[k])


def test_merge_without_positional_io_streams_instead(tmp_path, monkeypatch):
    """Where the OS has no ``preadv`` (Windows), linear merges take the streaming path."""
    import os

    import rmtllmf.fusion.merge as merge_module

    monkeypatch.delattr(os, "preadv")
    monkeypatch.setattr(merge_module, "fused_linear_merge", None)  # would fail if called
    base, fts = _models(2)
    paths = _save_models(tmp_path, base, fts)
    cfg = MergeConfig(scaling=0.3)
    merge_checkpoints(tmp_path / "base.safetensors", paths, tmp_path / "m.safetensors", cfg)
    got = load_file(tmp_path / "m.safetensors")
    expected = merge_task_vectors(base, [TaskVector.from_models(base, ft) for ft in fts], cfg)
    for k in base:
        torch.testing.assert_close(got[k], expected[k])


def _job_bytes(jobs) -> list[int]:
    """Bytes per element of each kernel job's dtype, times its count."""
    from rmtllmf.fusion.fast import kernel

    size = {code: torch.empty(0, dtype=d).element_size() for d, code in kernel.DTYPE_CODES.items()}
    return [int(c) * size[int(d)] for c, d in zip(jobs.counts, jobs.dtypes, strict=True)]


def _covered(jobs, q: int) -> list[tuple[int, int]]:
    """The byte ranges the jobs read from input ``q`` (``q = -1``: write to the output),
    sorted."""
    starts = jobs.out_starts if q < 0 else jobs.starts[:, q]
    return sorted((int(a), int(a) + n) for a, n in zip(starts, _job_bytes(jobs), strict=True))


def _merged_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Touching ranges joined."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        elif a < b:
            out.append((a, b))
    return out


def test_kernel_jobs_cover_every_tensor_once_in_windows_of_the_base_file(tmp_path, monkeypatch):
    """Kernel jobs read each selected tensor's bytes exactly once in every input and write them
    once in the output, hold at most KERNEL_CHUNK_BYTES, join tensors that lie back to back in
    every file (fewer jobs than tensors), and start, past a run's first job, at a multiple of
    KERNEL_CHUNK_BYTES in the base file, so that each job maps one huge page."""
    import rmtllmf.fusion.fast.fused as fused_module
    from rmtllmf.fusion.checkpoint import RawSafetensors, safetensors_prefix

    chunk = 200
    monkeypatch.setattr(fused_module, "KERNEL_CHUNK_BYTES", chunk)
    g = torch.Generator().manual_seed(2)
    tensors = {
        "a": torch.randn(3, generator=g),  # shorter than one window
        "a2": torch.randn(5, generator=g),  # joins "a"
        "b": torch.randn(301, generator=g).double(),
        "c": torch.randn(777, generator=g).half(),
        "d": torch.randn(129, generator=g),
        "e": torch.empty(0),
        "ids": torch.arange(7),  # an integer buffer: copied, never a kernel job
    }
    save_file(tensors, tmp_path / "m.safetensors")
    with RawSafetensors(tmp_path / "m.safetensors") as raw:
        order = raw.keys()
        _, spans = safetensors_prefix([(k, *raw.entries[k][::-1]) for k in order], {"x": "y"})
        selected = set(order) - {"ids"}
        jobs, others = fused_module._plan([raw, raw], order, selected, spans, use_kernel=True)
        assert [j.key for j in others] == ["ids"]
        assert all(0 < n <= chunk for n in _job_bytes(jobs))
        for q, where in [(0, raw.spans), (1, raw.spans), (-1, spans)]:
            covered = _covered(jobs, q)
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(covered))  # no overlap
            assert _merged_spans(covered) == _merged_spans([where[k] for k in selected])
        cut = [int(s) % chunk == 0 for s in jobs.starts[:, 0]]
        # a job that starts off a multiple of the window begins a run: a dtype change here
        run_starts = [raw.spans[k][0] for k in ("a", "b", "c", "d")]
        assert all(c or int(s) in run_starts for c, s in zip(cut, jobs.starts[:, 0], strict=True))
        per_tensor = sum(
            1 + len(range(s // chunk + 1, -(-e // chunk)))  # a job per window a tensor touches
            for s, e in (raw.spans[k] for k in selected - {"e"})
        )
        assert len(jobs) < per_tensor


def test_fused_merge_of_files_with_different_layouts(tmp_path):
    """Fine-tuned files that store the tensors in another order (so their runs do not line up
    with the base's) merge to the per-tensor formula."""
    base, fts = _models(3)
    g = torch.Generator().manual_seed(5)
    for extra in ("c.weight", "d.weight"):
        base[extra] = torch.randn(40, 9, generator=g)
        for ft in fts:
            ft[extra] = base[extra] + 0.05 * torch.randn(40, 9, generator=g)
    save_file(base, tmp_path / "base.safetensors")
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for i, (p, ft) in enumerate(zip(paths, fts, strict=True)):
        keys = sorted(ft, reverse=i == 1)  # the second file in reverse order
        save_file({k: ft[k] for k in keys}, p, metadata={"pad": "x" * (13 * i)})
    out = tmp_path / "m.safetensors"
    merge_checkpoints(tmp_path / "base.safetensors", paths, out, MergeConfig(scaling=0.45))
    got = load_file(out)
    for k, v in base.items():
        if not v.is_floating_point():
            assert torch.equal(got[k], v)
            continue
        expected = v.double() + 0.45 * sum(ft[k].double() - v.double() for ft in fts)
        torch.testing.assert_close(got[k], expected.to(v.dtype))


def test_an_interrupted_merge_stops_its_threads_and_leaves_no_file(tmp_path, monkeypatch):
    """Ctrl-C during a fused merge sets the kernel's job counter to the end (the kernel's
    threads stop after the jobs under way), waits for them, and leaves neither the output nor
    a partial file behind."""
    import signal
    import threading
    import time

    from rmtllmf.fusion.fast import kernel

    running = threading.Event()

    class EndlessKernel:
        """A kernel call that runs until its counter is moved to the end."""

        stopped = False

        def run(self, fds, jobs, out_fd, weights, threads, stop):
            running.set()
            deadline = time.monotonic() + 20  # a test that fails, not one that hangs
            while stop.value < len(jobs) and time.monotonic() < deadline:
                time.sleep(0.005)
            EndlessKernel.stopped = stop.value >= len(jobs)

    monkeypatch.setattr(kernel, "KERNEL", EndlessKernel())
    base, fts = _models(2)
    paths = _save_models(tmp_path, base, fts)
    out = tmp_path / "m.safetensors"

    def interrupt() -> None:  # Ctrl-C, once the kernel runs
        running.wait(30)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        merge_checkpoints(tmp_path / "base.safetensors", paths, out, MergeConfig(scaling=0.3))
    assert EndlessKernel.stopped
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["base.safetensors", *(p.name for p in paths)]
    )


@pytest.mark.parametrize("started", [True, False])
def test_an_interrupt_while_the_merge_thread_starts_still_stops_it(monkeypatch, started):
    """Ctrl-C can reach the main thread while it starts the merge's helper thread, after the
    thread has begun (``started``) or before: the merge is cancelled and waited for all the
    same, never left running on files that its caller then closes, and a thread that never
    began is not waited for."""
    import threading
    import time

    from rmtllmf.fusion.fast import fused

    cancelled = threading.Event()
    ran = threading.Event()
    stopped_by_cancel: list[bool] = []

    def work() -> None:
        ran.set()
        deadline = time.monotonic() + 20  # a test that fails, not one that hangs
        while not cancelled.is_set() and time.monotonic() < deadline:
            time.sleep(0.005)
        stopped_by_cancel.append(cancelled.is_set())

    start = threading.Thread.start

    def interrupted_start(self: threading.Thread) -> None:
        if started:
            start(self)
            ran.wait(10)  # the work is under way when the interrupt arrives
        raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    with pytest.raises(KeyboardInterrupt):
        fused._interruptible(work, cancelled.set)
    assert cancelled.is_set()
    assert stopped_by_cancel == ([True] if started else [])
