"""Streaming merges hold far less memory than one model: each merge runs in a child process
whose anonymous resident memory (``RssAnon``: heap and private allocations, not the page cache
of memory-mapped checkpoints) is sampled every millisecond; its peak above the level after the
imports and the BLAS libraries' one-time buffers must stay under half a checkpoint. A control
holding one checkpoint's tensors as one flat vector (what a whole-task-vector statistic such as
TIES's threshold used to need) is seen to cross that line, so the sampling catches it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

TENSORS, ELEMENTS = 192, 1 << 17  # 192 float32 tensors of 512 KiB: 96 MiB per checkpoint
CHECKPOINT = TENSORS * ELEMENTS * 4
LIMIT = CHECKPOINT // 2

CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from rmtllmf.fusion import MergeConfig, merge_checkpoints
    torch.set_num_threads(1)
    np.ones((64, 64)) @ np.ones((64, 64)); torch.ones(64, 64) @ torch.ones(64, 64)  # BLAS buffers

    def anon():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("RssAnon"))

    root = Path(sys.argv[1]); what = sys.argv[2]
    fts = [root / f"ft{i}.safetensors" for i in range(3)]
    if what.startswith("sharded-"):  # HF directories, one large tensor: the slice path
        fts = [root / f"ft{i}" for i in range(3)]
    start, peak, done = anon(), [0], threading.Event()
    def sample():
        while not done.wait(0.001):
            peak[0] = max(peak[0], anon())
    sampler = threading.Thread(target=sample); sampler.start()
    if what == "one-checkpoint-flat":  # what a whole-task-vector statistic used to hold
        held = torch.cat([t.reshape(-1) for t in load_file(root / "base.safetensors").values()])
        time.sleep(0.05)
    elif what == "sharded-task-arithmetic":
        merge_checkpoints(root / "base", fts, root / f"{what}.safetensors", MergeConfig())
    elif what in ("sharded-ties", "sharded-dare-ties"):
        method = what.split("-")[1]
        options = {"density": 0.2, **({"combine": "ties"} if method == "dare" else {})}
        config = MergeConfig(method=method, options=options)
        merge_checkpoints(root / "base", fts, root / f"{what}.safetensors", config)
    else:
        config = {"ties": MergeConfig(method="ties", scaling=0.5, options={"density": 0.2}),
                  "task-arithmetic": MergeConfig(scaling=0.3)}[what]
        merge_checkpoints(root / "base.safetensors", fts, root / f"{what}.safetensors", config)
    done.set(); sampler.join()
    print(max(peak[0], anon()) - start)
    """
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("memory")
    gen = torch.Generator().manual_seed(0)
    base = {f"layer{i}.weight": torch.randn(ELEMENTS, generator=gen) for i in range(TENSORS)}
    save_file(base, root / "base.safetensors")
    for q in range(3):
        ft = {k: v + 0.01 * torch.randn(ELEMENTS, generator=gen) for k, v in base.items()}
        save_file(ft, root / f"ft{q}.safetensors")
    return root


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """Base and three fine-tuned Hugging Face directories, each one 64 MiB tensor (an LLM's
    embedding, in miniature) and a small one, in two shards with an index."""
    root = tmp_path_factory.mktemp("sharded")
    gen = torch.Generator().manual_seed(1)
    base = {"embed.weight": torch.randn(1 << 24, generator=gen), "norm.weight": torch.ones(64)}
    for name in ["base", "ft0", "ft1", "ft2"]:
        model = base if name == "base" else {k: v + 0.01 for k, v in base.items()}
        d = root / name
        d.mkdir()
        save_file({"embed.weight": model["embed.weight"]}, d / "model-00001-of-00002.safetensors")
        save_file({"norm.weight": model["norm.weight"]}, d / "model-00002-of-00002.safetensors")
        weight_map = {
            "embed.weight": "model-00001-of-00002.safetensors",
            "norm.weight": "model-00002-of-00002.safetensors",
        }
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return root


def _peak(root: Path, what: str, env: dict[str, str] | None = None) -> int:
    """Peak anonymous memory of one child run above its level before the work, in bytes."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), what],
        capture_output=True,
        text=True,
        # a fixed mmap threshold: freed large blocks go back at once, so RssAnon is live memory
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
            "OPENBLAS_NUM_THREADS": "1",
            "MALLOC_MMAP_THRESHOLD_": "131072",
            **(env or {}),
        },
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


def test_one_checkpoint_in_memory_is_seen_above_the_limit(checkpoints):
    assert _peak(checkpoints, "one-checkpoint-flat") > LIMIT


@pytest.mark.parametrize(
    ("what", "env"),
    [
        ("ties", None),  # two streamed passes for the thresholds, then the merge
        ("task-arithmetic", None),  # the compiled kernel where it was built
        ("task-arithmetic", {"RMTLLMF_NO_KERNEL": "1"}),  # the numpy path
    ],
)
def test_streaming_merge_of_four_checkpoints_stays_under_half_a_checkpoint(checkpoints, what, env):
    assert _peak(checkpoints, what, env) < LIMIT
    assert (checkpoints / f"{what}.safetensors").stat().st_size > CHECKPOINT


@pytest.mark.parametrize("what", ["sharded-task-arithmetic", "sharded-ties", "sharded-dare-ties"])
def test_a_large_tensor_of_sharded_checkpoints_is_merged_in_slices(sharded, what):
    """Merges of sharded checkpoints (the streaming path) hold slices of the 64 MiB tensor, not
    the tensor: whole, it would be four float32 copies and a stack of three (TIES and DARE with
    TIES: their thresholds' magnitudes and majority signs are streamed in slices too)."""
    assert _peak(sharded, what) < (64 << 20) // 2
    assert (sharded / f"{what}.safetensors").stat().st_size > 64 << 20
