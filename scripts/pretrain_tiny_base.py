"""Pretrain the embedded tiny base model on the pretext and write the shipped checkpoint.

    python scripts/pretrain_tiny_base.py [--images 120000 --steps 3000 --out PATH]

Reproduces ``src/rmtllmf/models/assets/tiny_vit_base.safetensors`` (seeded; CPU, 2 threads).
The configuration and the held-out pretext accuracy per factor are written next to it as JSON.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from rmtllmf.data.synthetic import PRETEXT_HEADS, pretext
from rmtllmf.models.tiny_vit import TinyVit, TinyVitConfig
from rmtllmf.train import embed, pretrain

ASSET = Path(__file__).resolve().parents[1] / "src/rmtllmf/models/assets/tiny_vit_base.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=120_000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ASSET)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = TinyVitConfig(patch_size=8, hidden=192, layers=6, heads=6, mlp=768, embed_dim=128)
    t0 = time.perf_counter()
    images, labels = pretext(np.random.default_rng([args.seed, 100]), args.images)
    test_x, test_y = pretext(np.random.default_rng([args.seed, 101]), 4000)
    print(f"pretext generated in {time.perf_counter() - t0:.0f} s", flush=True)
    model = TinyVit(cfg)
    sizes = list(PRETEXT_HEADS.values())
    weights = [3.0 if name == "glyph" else 1.0 for name in PRETEXT_HEADS]
    t1 = time.perf_counter()
    losses = pretrain(
        model,
        images,
        labels,
        sizes,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        loss_weights=weights,
        seed=args.seed,
        progress=True,
    )
    train_s = time.perf_counter() - t1
    meta = {
        "config": cfg.model_dump(),
        "seed": args.seed,
        "images": args.images,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "train_seconds": train_s,
        "final_loss": float(np.mean(losses[-50:])),
    }
    save(model, meta, args.out)  # first, so that nothing after training can lose it
    meta["pretext_probe_accuracy"] = probe_accuracy(
        model, images[:20000], labels[:20000], test_x, test_y
    )
    save(model, meta, args.out)
    print(json.dumps(meta, indent=2))


def save(model: TinyVit, meta: dict[str, object], out: Path) -> None:
    """Write the checkpoint (config in its metadata) and the JSON record beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        out,
        {"format": "pt", "rmtllmf": json.dumps(meta)},
    )
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2))


def probe_accuracy(
    model: TinyVit,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
) -> dict[str, float]:
    """Held-out accuracy per pretext factor of a linear probe on frozen embeddings."""
    z_tr, z_te = embed(model, train_x).clone(), embed(model, test_x).clone()
    out = {}
    for j, (name, k) in enumerate(PRETEXT_HEADS.items()):
        probe = torch.nn.Linear(z_tr.shape[1], k)
        opt = torch.optim.Adam(probe.parameters(), 1e-2)
        y = torch.from_numpy(train_y[:, j])
        for _ in range(200):
            loss = torch.nn.functional.cross_entropy(probe(z_tr), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out[name] = float((probe(z_te).argmax(1).numpy() == test_y[:, j]).mean())
    return out


if __name__ == "__main__":
    main()
