"""Accuracy vs payload on the text suite: full task vectors against LoRA users (r = 4, 8, 16)
sending their delta ``s B A`` or their factors ``A, B``, at N = 8 on the same channels.

    python scripts/text_payloads.py --cache ~/.cache/rmtllmf --out docs/text-payloads.md [--ranks 8]

Builds (or reuses) the full-fine-tune text pool and one LoRA pool per rank, chooses each pool's
``lambda`` on validation (the clean merge of all eight tasks), then runs every payload through
the ideal and sum-rate uplinks on the snr and symbol links, undefended and with R-MTLLMF, and
writes a markdown table with the channel uses each user needs on the analog and the digital link.
Results are cached per run in ``OUT.json`` beside the table (a rerun skips finished runs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from rmtllmf.channel import SymbolLinkConfig
from rmtllmf.defense import RealignConfig
from rmtllmf.fusion import MergeConfig
from rmtllmf.pools.text_pool import TextPool, TextPoolConfig, build_text_pool
from rmtllmf.study.experiment import ExperimentConfig, run_experiment
from rmtllmf.study.payload import channel_uses, payload_entries

RANKS = (8, 4, 16)
LAMBDAS = tuple(round(0.1 * i, 1) for i in range(1, 11))
SCENARIOS = ("ideal", "sum-rate")
LINKS = ("snr", "symbol")
DEFENSES = ("none", "r-mtllmf")
REALIGN = RealignConfig(k_per_class=10, steps=40, batch=32, lr=1e-4, validate_every=10)


def choose_lambda(pool: TextPool) -> float:
    """``lambda`` of the best clean 8-task merge on validation."""
    tasks = pool.config.tasks
    scores = {}
    for lam in LAMBDAS:
        cfg = ExperimentConfig(
            tasks=tasks, link="noiseless", split="val", merge=MergeConfig(scaling=lam)
        )
        scores[lam] = run_experiment(pool, cfg).normalized
    return max(scores, key=lambda k: scores[k])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="markdown table to write")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--ranks", type=int, nargs="+", default=list(RANKS), help="LoRA ranks to compare"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = args.out.with_suffix(".json")
    done: dict[str, dict[str, float]] = json.loads(store.read_text()) if store.exists() else {}
    pools = {"full": TextPoolConfig()}
    pools |= {f"lora-r{r}": TextPoolConfig(lora_rank=r, lr=1e-3) for r in args.ranks}
    symbol = SymbolLinkConfig()
    rows = []
    experts = {}
    for name, pcfg in pools.items():
        pool = build_text_pool(args.cache / "text", pcfg, progress=True, workers=args.workers)
        tasks = pcfg.tasks
        experts[name] = {t: (pool.base_accuracy(t), pool.finetuned_accuracy(t)) for t in tasks}
        lam_key = f"{pool.pool_id}/lambda"
        if lam_key not in done:
            done[lam_key] = {"lambda": choose_lambda(pool)}
        lam = done[lam_key]["lambda"]
        payloads = ("delta", "factors") if pcfg.lora_rank else ("delta",)
        for payload in payloads:
            entries = payload_entries(pool, tasks[0], payload)
            for scenario in SCENARIOS:
                for link in LINKS:
                    for defense in DEFENSES:
                        key = f"{pool.pool_id}/{payload}/{scenario}/{link}/{defense}"
                        if key not in done:
                            cfg = ExperimentConfig(
                                tasks=tasks,
                                scenario=scenario,
                                link=link,
                                defense=defense,
                                payload=payload,
                                merge=MergeConfig(scaling=lam),
                                realign=REALIGN,
                            )
                            t0 = time.perf_counter()
                            result = run_experiment(pool, cfg)
                            done[key] = {
                                "normalized": result.normalized,
                                "mean": float(np.mean(list(result.accuracy.values()))),
                                "chance": result.chance,
                                "seconds": time.perf_counter() - t0,
                            }
                            store.write_text(json.dumps(done, indent=1))
                            print(key, done[key], flush=True)
                        rows.append(
                            (
                                name,
                                payload,
                                scenario,
                                link,
                                defense,
                                lam,
                                entries,
                                channel_uses(entries, link, symbol),
                                channel_uses(entries, "symbol", symbol),
                                done[key],
                            )
                        )
    store.write_text(json.dumps(done, indent=1))
    lines = [
        "| users | payload | scenario | link | defense | λ | entries / user "
        "| channel uses / user (this link) | channel uses / user (symbol link, 8 bits, 64-QAM) "
        "| normalized acc. | mean acc. |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, payload, scenario, link, defense, lam, entries, uses, digital, r in rows:
        lines.append(
            f"| {name} | {payload} | {scenario} | {link} | {defense} | {lam} | {entries:,} "
            f"| {uses:,} | {digital:,} | {r['normalized']:.3f} | {r['mean']:.3f} |"
        )
    lines += ["", "| users | task | base | fine-tuned |", "|---|---|---|---|"]
    for name, by_task in experts.items():
        for task, (b, f) in by_task.items():
            lines.append(f"| {name} | {task} | {b:.3f} | {f:.3f} |")
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
