"""A first look at the paper's ablation on the embedded zoo (until `rmtllmf reproduce` exists).

    python scripts/ablation_quick.py --base PATH [--root DIR] [--link absolute] [--lam 0.25]

All eight tasks, one user each; for each of the paper's MSE presets (0.013 ideal, 0.16
strongest-user, 0.21 sum-rate) and the clean control, every defense (none, freeze, realign,
r-mtllmf). Prints normalized test accuracy, one row per scenario.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
from pathlib import Path

import torch

from rmtllmf.defense import DEFENSES
from rmtllmf.experiment import ExperimentConfig, run_experiment
from rmtllmf.fusion import MergeConfig
from rmtllmf.zoo import ZooConfig, build_zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default=None)
    parser.add_argument("--root", type=Path, default=Path("~/.cache/rmtllmf/zoo").expanduser())
    parser.add_argument("--link", default="absolute")
    parser.add_argument("--lam", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    zoo = build_zoo(args.root, ZooConfig(base=args.base))
    tasks = zoo.config.tasks
    rows = {}
    for scenario in ("clean", "paper-ideal", "paper-strongest-user", "paper-sum-rate"):
        rows[scenario] = {}
        for defense in DEFENSES:
            cfg = ExperimentConfig(
                tasks=tasks,
                scenario="paper-ideal" if scenario == "clean" else scenario,
                link="noiseless" if scenario == "clean" else args.link,
                merge=MergeConfig(scaling=args.lam),
                defense=defense,
                seed=args.seed,
            )
            rows[scenario][defense] = round(run_experiment(zoo, cfg).normalized, 3)
        print(scenario, rows[scenario], flush=True)
    print(json.dumps({"link": args.link, "lambda": args.lam, "normalized": rows}, indent=2))


if __name__ == "__main__":
    main()
