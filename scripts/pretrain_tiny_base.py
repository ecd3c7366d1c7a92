"""Pretrain the embedded tiny base and write the checkpoint the package ships.

    python scripts/pretrain_tiny_base.py [--steps 15000 --images 240000 --out PATH]

Writes ``src/rmtllmf/models/assets/tiny_vit_base.safetensors`` by default, and the record with
the configuration and the held-out pretext probe accuracy as JSON beside it. Seeded and
single-threaded, so bit-reproducible: the defaults remake the shipped base (50 min here on one
core, with other work on the second).
``rmtllmf zoo build`` does the same automatically, into its cache, when no base is shipped.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
from pathlib import Path

import torch

from rmtllmf.training.pretrain import PretrainConfig, pretrain_tiny_base

ASSET = Path(__file__).resolve().parents[1] / "src/rmtllmf/models/assets/tiny_vit_base.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    defaults = PretrainConfig()
    parser.add_argument("--images", type=int, default=defaults.images)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=1, help="1 makes the run bit-reproducible")
    parser.add_argument("--out", type=Path, default=ASSET)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PretrainConfig(images=args.images, steps=args.steps, lr=args.lr, seed=args.seed)
    print(json.dumps(pretrain_tiny_base(args.out, cfg, progress=True), indent=2))


if __name__ == "__main__":
    main()
