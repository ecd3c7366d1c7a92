"""Symbol-level uplink throughput: rmtllmf's MMSE-SIC link vs a Sionna 2.2 chain, same problem.

Problem (the paper's setup): 8 single-antenna users, 16 BS antennas, Gray 64-QAM, i.i.d.
Rayleigh fading, N symbols per user (default 1e6, i.e. 8e6 symbols in total).

* rmtllmf: ``transmit_symbols`` end to end (quantise -> QAM -> MIMO MAC -> MMSE-SIC with
  decision feedback -> demap -> dequantise) on float32 payloads sized to N symbols per user.
* Sionna (when importable): Mapper("qam", 6) -> RayleighBlockFading -> y = Hx + n ->
  lmmse_equalizer -> Demapper("app", hard_out=True) over the same symbols, in blocks of
  ``--sionna-block`` channel uses (one fading draw per block); no SIC (Sionna has none).

Throughput = (users x channel uses) / wall time, measured in this run for both.

    python benchmarks/bench_symbol_link.py                    # 8e6 symbols, Sionna if installed
    python benchmarks/bench_symbol_link.py --clip             # + 86M-parameter vector per user
    pip install torch==2.13.0 sionna-no-rt==2.2.0             # to enable the side-by-side run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # fair to torch on shared cores

import numpy as np

from rmtllmf.channel import ScenarioConfig, SymbolLinkConfig, draw_realization, transmit_symbols

USERS, ANTENNAS, BITS_PER_SYMBOL = 8, 16, 6


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_rmtllmf(values_per_user: int, seed: int, workers: int | None) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    channel = draw_realization(ScenarioConfig(scenario="sum-rate"), rng)
    payload = [
        rng.standard_normal(values_per_user, dtype=np.float32) * np.float32(0.01)
        for _ in range(USERS)
    ]
    link = SymbolLinkConfig(bits=8, modulation_order=64, workers=workers)
    start = time.perf_counter()
    result = transmit_symbols(payload, channel, link, rng)
    seconds = time.perf_counter() - start
    n_uses = result.stats[0].n_symbols
    return {
        "values_per_user": values_per_user,
        "symbols_total": USERS * n_uses,
        "seconds": seconds,
        "symbols_per_s": USERS * n_uses / seconds,
        "mean_ber": float(np.mean([s.ber for s in result.stats])),
        "peak_rss_gib": peak_rss_gib(),
    }


def run_sionna(symbols_per_user: int, block: int, threads: int) -> dict[str, float] | None:
    try:
        import torch
        from sionna.phy.channel import RayleighBlockFading
        from sionna.phy.mapping import Demapper, Mapper
        from sionna.phy.mimo import lmmse_equalizer
    except ImportError:
        return None
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    mapper = Mapper("qam", BITS_PER_SYMBOL)
    demapper = Demapper("app", "qam", BITS_PER_SYMBOL, hard_out=True)
    fading = RayleighBlockFading(num_rx=1, num_rx_ant=ANTENNAS, num_tx=USERS, num_tx_ant=1)
    no = 0.05
    n_blocks = max(1, symbols_per_user // block)
    chunk_blocks = max(1, 2**17 // block)  # bounded memory: ~1.3e5 channel uses per step
    errors, n_bits = 0, 0
    start = time.perf_counter()
    with torch.no_grad():
        done = 0
        while done < n_blocks:
            b = min(chunk_blocks, n_blocks - done)
            bits = torch.randint(0, 2, (b, block, USERS * BITS_PER_SYMBOL)).float()
            x = mapper(bits.reshape(b, block, USERS, BITS_PER_SYMBOL).reshape(b, block, -1))
            x = x.reshape(b, block, USERS)
            h, _ = fading(batch_size=b, num_time_steps=1)
            H = h.reshape(b, ANTENNAS, USERS)[:, None]  # [b, 1, N_R, Q]
            n = torch.complex(torch.randn(b, block, ANTENNAS), torch.randn(b, block, ANTENNAS))
            y = (H @ x[..., None]).squeeze(-1) + n * np.sqrt(no / 2)
            s = (no * torch.eye(ANTENNAS, dtype=torch.complex64)).expand(b, block, -1, -1)
            x_hat, no_eff = lmmse_equalizer(y, H.expand(-1, block, -1, -1), s)
            decided = demapper(x_hat, no_eff)
            errors += int((decided != bits.reshape(b, block, -1)).sum())
            n_bits += bits.numel()
            done += b
    seconds = time.perf_counter() - start
    total = n_blocks * block * USERS
    return {
        "symbols_total": total,
        "seconds": seconds,
        "symbols_per_s": total / seconds,
        "ber": errors / n_bits,
        "threads": threads,
        "peak_rss_gib": peak_rss_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--symbols-per-user", type=int, default=1_000_000)
    parser.add_argument("--sionna-symbols-per-user", type=int, default=None, help="default: same")
    parser.add_argument("--sionna-block", type=int, default=1024)
    parser.add_argument("--no-sionna", action="store_true")
    parser.add_argument("--clip", action="store_true", help="also send 86M float32 per user")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write results to this file")
    args = parser.parse_args()
    threads = args.workers or os.cpu_count() or 1
    report: dict[str, object] = {
        "users": USERS,
        "antennas": ANTENNAS,
        "qam": 64,
        "cpus": os.cpu_count(),
    }
    ours = run_rmtllmf(args.symbols_per_user * BITS_PER_SYMBOL // 8, args.seed, args.workers)
    report["rmtllmf"] = ours
    print(
        f"rmtllmf: {ours['symbols_total']:.3g} symbols in {ours['seconds']:.1f} s = "
        f"{ours['symbols_per_s'] / 1e6:.2f} M symbols/s (peak RSS {ours['peak_rss_gib']:.2f} GiB)"
    )
    if not args.no_sionna:
        n = args.sionna_symbols_per_user or args.symbols_per_user
        peer = run_sionna(n, args.sionna_block, threads)
        if peer is None:
            print("sionna: not installed (pip install torch==2.13.0 sionna-no-rt==2.2.0)")
        else:
            report["sionna"] = peer
            ratio = ours["symbols_per_s"] / peer["symbols_per_s"]
            report["speedup_vs_sionna"] = ratio
            print(
                f"sionna:  {peer['symbols_total']:.3g} symbols in {peer['seconds']:.1f} s = "
                f"{peer['symbols_per_s'] / 1e6:.3f} M symbols/s ({threads} torch threads)"
            )
            print(f"speed-up of rmtllmf over sionna: {ratio:.0f}x")
    if args.clip:
        clip = run_rmtllmf(86_000_000, args.seed, args.workers)
        report["clip_vit_b16_vector"] = clip
        print(
            f"CLIP ViT-B/16-sized vector (86M float32 x {USERS} users, 8-bit, 64-QAM): "
            f"{clip['seconds']:.0f} s, {clip['symbols_per_s'] / 1e6:.2f} M symbols/s, "
            f"peak RSS {clip['peak_rss_gib']:.2f} GiB"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
