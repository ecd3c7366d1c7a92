"""``rmtllmf channel``: draw channel realizations and print what the uplink does."""

from __future__ import annotations

import argparse
import json

import numpy as np
from rich.table import Table

from rmtllmf._progress import minutes, progress_bar
from rmtllmf.channel.geometry import PathLossConfig
from rmtllmf.channel.scenario import (
    DB_LIMIT,
    DEFAULT_JNR_DB,
    SCENARIOS,
    ScenarioConfig,
    draw_realization,
)
from rmtllmf.channel.summary import ChannelSummary, compare_aircomp, measure, summarize
from rmtllmf.channel.symbol_link import SymbolLinkConfig
from rmtllmf.cli.common import examples, rich_console
from rmtllmf.errors import InputError

FLAGS = {
    "n_users": "--users",
    "n_antennas": "--antennas",
    "r_min_m": "--r-min",
    "r_max_m": "--r-max",
    "tx_power_dbm": "--tx-dbm",
    "bandwidth_hz": "--bandwidth-hz",
    "noise_figure_db": "--noise-figure-db",
    "jammer_dbm": "--jammer-dbm",
    "jnr_db": "--jnr-db",
    "exponent": "--exponent",
    "model": "--path-loss",
    "bits": "--bits",
    "modulation_order": "--qam",
}
"""Config field -> the flag that sets it, so errors name what the user typed."""

MAX_USERS = 1024
"""Users the per-user table shows at most (and the receiver's loop runs over)."""
MAX_ANTENNAS = 1024
MAX_RECEIVER_WORK = 2**33
"""Bound on ``Q * N_R^3``: the MMSE-SIC theory takes one ``N_R x N_R`` eigendecomposition per
user (``channel.linalg.hermitian_split``); the bound keeps a call near 10 s (the times at the
bounds: docs/benchmarks.md, "Channel bounds")."""
USERS_PER_SIC_STEP = 128
"""Above this many users the symbol link's per-symbol cost grows with the users too (the SIC
detector's steps): a simulation costs ``symbols * users * (1 + users / 128)`` units."""
MAX_SYMBOL_WORK = 2**27 * (1 + 8 / USERS_PER_SIC_STEP)
"""Bound on those units (8 users: 2^27 / 8 = 16.8M symbols), near 10 s and 1 GB
(docs/benchmarks.md, "Channel bounds")."""
AIRCOMP_WORK_PER_CUBE = 12_800
"""Eigendecompositions of ``N_R x N_R`` matrices an AirComp jammer-first draw takes: 200 in
each unbiased design search, 64 designs in the ascent."""
SECONDS_PER_UNIT = 5e-8
"""Seconds per unit, for the time a refused request would take (docs/benchmarks.md)."""
BYTES_PER_UNIT = 6.3
"""Peak bytes per unit, likewise (docs/benchmarks.md)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "channel",
        help="draw one uplink realization and print per-user SNR, SINR, rate and MSE",
        description="Per-user figures of the MIMO uplink (paper eqs. 3-5) for one scenario: "
        "users placed at random between --r-min and --r-max, Rayleigh fading, full power, and "
        "the scenario's jammer (none, worst case for the sum rate, for the strongest user, or "
        "against over-the-air computation: moving first, or answering the base station). "
        "Theory by default; --symbols also simulates the digital link and measures it; "
        "--aircomp sets MMSE-SIC beside AirComp for the users' sum.",
        epilog=examples(
            "rmtllmf channel --scenario sum-rate --jnr-db 10",
            "rmtllmf channel --users 4 --antennas 8 --symbols 2000 --qam 16",
            "rmtllmf channel --scenario strongest-user --jammer-dbm 0 --json > uplink.json",
            "rmtllmf channel --scenario aircomp-maxmin --aircomp",
        ),
    )
    p.add_argument("--scenario", choices=SCENARIOS, default="ideal", help="jammer model")
    p.add_argument("--users", type=int, default=8, help="single-antenna users Q")
    p.add_argument("--antennas", type=int, default=16, help="BS antennas N_R")
    p.add_argument("--seed", type=int, default=0, help="seed of placement and fading")
    jam = p.add_mutually_exclusive_group()
    jam.add_argument(
        "--jammer-dbm",
        type=float,
        help=f"jammer power P_N in dBm, within +-{DB_LIMIT:g} (default: from --jnr-db)",
    )
    jam.add_argument(
        "--jnr-db",
        type=float,
        help=f"jammer power over N_R * thermal power in dB (default {DEFAULT_JNR_DB:g})",
    )
    p.add_argument("--tx-dbm", type=float, default=-10.0, help="user power in dBm (0.1 mW)")
    p.add_argument("--bandwidth-hz", type=float, default=180e3, help="bandwidth B")
    p.add_argument("--noise-figure-db", type=float, default=5.0, help="receiver noise figure")
    p.add_argument(
        "--path-loss",
        choices=["log-distance", "3gpp-umi", "3gpp-uma"],
        default="log-distance",
        help="path-loss model",
    )
    p.add_argument("--exponent", type=float, default=2.0, help="log-distance exponent")
    p.add_argument("--r-min", type=float, default=100.0, help="closest user distance in m")
    p.add_argument("--r-max", type=float, default=1000.0, help="farthest user distance in m")
    p.add_argument("--qam", type=int, choices=[4, 16, 64, 256], default=64, help="QAM order")
    p.add_argument("--bits", type=int, default=8, help="quantiser bits for --symbols")
    p.add_argument("--symbols", type=int, default=0, help="also simulate this many channel uses")
    p.add_argument("--genie", action="store_true", help="genie-aided SIC for --symbols")
    p.add_argument(
        "--aircomp",
        action="store_true",
        help="also the MSE of the users' sum (scale 1 each) for MMSE-SIC and for the MMSE and "
        "unbiased over-the-air (AirComp) receivers",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument(
        "--no-limit",
        action="store_true",
        help=f"go past the size bounds (--users, --antennas <= {MAX_USERS}; users x antennas^3 "
        "<= 2^33, about 10 s; --symbols: about 10 s and 1 GB, 16.8M for 8 users) on a machine "
        "with the memory and time for it",
    )


def check_sizes(args: argparse.Namespace) -> None:
    """The sizes the user typed, within bounds chosen from memory and time (see the
    ``MAX_*`` constants), unless ``--no-limit``; the message says the bound and the way past."""
    if args.symbols < 0:
        raise InputError(f"--symbols {args.symbols} is negative; give 0 (theory only) or more")
    if args.no_limit:
        return
    past = "or pass --no-limit if this machine has the memory and time for it"
    for flag, value, bound in (
        ("--users", args.users, MAX_USERS),
        ("--antennas", args.antennas, MAX_ANTENNAS),
    ):
        if value > bound:
            raise InputError(
                f"{flag} {value} is above the bound {bound}; give at most {bound}, {past}"
            )
    if args.aircomp or args.scenario.startswith("aircomp"):
        air_work = AIRCOMP_WORK_PER_CUBE * args.antennas**3
        if air_work > MAX_RECEIVER_WORK:
            raise InputError(
                f"--antennas {args.antennas} with AirComp means about {AIRCOMP_WORK_PER_CUBE} "
                f"eigendecompositions of {args.antennas}x{args.antennas} matrices (bound "
                f"{MAX_RECEIVER_WORK:.2e} units, about 10 s): give fewer antennas, {past}"
            )
    work = args.users * args.antennas**3
    if work > MAX_RECEIVER_WORK:
        raise InputError(
            f"--users {args.users} with --antennas {args.antennas} means {args.users} "
            f"eigendecompositions of {args.antennas}x{args.antennas} matrices (users x antennas^3 "
            f"= {work:.2e}, bound {MAX_RECEIVER_WORK:.2e}, about 10 s): give fewer users or "
            f"antennas, {past}"
        )
    per_symbol = args.users * (1 + args.users / USERS_PER_SIC_STEP)
    if args.symbols * per_symbol > MAX_SYMBOL_WORK:
        units = args.symbols * per_symbol
        raise InputError(
            f"--symbols {args.symbols} for {args.users} users would take about "
            f"{minutes(units * SECONDS_PER_UNIT)} and up to {units * BYTES_PER_UNIT / 1e9:.1f} GB "
            f"(the bound is about 10 s and 1 GB); give at most --symbols "
            f"{int(MAX_SYMBOL_WORK // per_symbol)} and repeat with other --seed values to "
            f"average, {past}"
        )


def check_flags_apply(args: argparse.Namespace) -> None:
    """Refuse flags that the other flags make meaningless, instead of ignoring them."""
    if args.scenario == "ideal" and (args.jammer_dbm is not None or args.jnr_db is not None):
        raise InputError(
            "--jammer-dbm / --jnr-db set the jammer, and --scenario ideal has none; drop them or "
            "choose a jammed --scenario (" + ", ".join(SCENARIOS[1:]) + ")"
        )
    if args.symbols == 0 and (args.genie or args.bits != 8):
        raise InputError(
            "--genie and --bits shape the simulated symbol link; add --symbols N, or drop them"
        )
    if args.path_loss != "log-distance" and args.exponent != 2.0:
        raise InputError(
            f"--exponent belongs to --path-loss log-distance, not {args.path_loss}; drop it"
        )


def run(args: argparse.Namespace) -> int:
    """Draw the uplink of the flags' scenario and print its per-user figures."""
    check_sizes(args)
    check_flags_apply(args)
    cfg = ScenarioConfig(
        scenario=args.scenario,
        n_users=args.users,
        n_antennas=args.antennas,
        r_min_m=args.r_min,
        r_max_m=args.r_max,
        path_loss=PathLossConfig(model=args.path_loss, exponent=args.exponent),
        tx_power_dbm=args.tx_dbm,
        bandwidth_hz=args.bandwidth_hz,
        noise_figure_db=args.noise_figure_db,
        jammer_dbm=args.jammer_dbm,
        jnr_db=args.jnr_db,
    )
    rng = np.random.default_rng(args.seed)
    channel = draw_realization(cfg, rng)
    summary = summarize(cfg, channel, args.qam)
    if args.aircomp:
        summary = compare_aircomp(summary, channel)
    if args.symbols > 0:
        link = SymbolLinkConfig(bits=args.bits, modulation_order=args.qam, genie=args.genie)
        with progress_bar(args.symbols >= 10**6, "channel uses", args.symbols) as advance:
            summary = measure(
                summary, channel, link, args.symbols, rng, lambda n: advance("channel uses", n)
            )
    if args.json:
        out = {"config": cfg.model_dump(), "seed": args.seed, **summary.to_dict()}
        print(json.dumps(out, indent=2))
    else:
        _print_summary(summary, args.qam)
    return 0


def _print_summary(summary: ChannelSummary, qam: int) -> None:
    table = Table(title=f"Uplink, scenario '{summary.scenario}' ({qam}-QAM theory)")
    for name in ("user", "dist m", "PL dB", "SNR dB", "SIC", "SINR dB", "rate nats", "MSE mu"):
        table.add_column(name, justify="right")
    table.add_column("BER theory", justify="right")
    if summary.measured:
        for name in ("MSE meas.", "BER meas."):
            table.add_column(name, justify="right")
    for i, r in enumerate(summary.users):
        cells = [
            str(r.user),
            f"{r.distance_m:.0f}",
            f"{r.path_loss_db:.1f}",
            f"{r.snr_db:.1f}",
            str(r.sic_position),
            f"{r.sinr_db:.1f}",
            f"{r.rate_nats:.3f}",
            f"{r.mse:.4g}",
            f"{r.ber_theory:.3g}",
        ]
        if summary.measured:
            m = summary.measured[i]
            cells += [f"{m.symbol_mse:.4g}", f"{m.ber:.3g}"]
        table.add_row(*cells)
    console = rich_console(140)
    console.print(table)
    jammer = "none" if summary.jammer_dbm == -np.inf else f"{summary.jammer_dbm:.1f} dBm"
    console.print(
        f"thermal {summary.thermal_dbm:.1f} dBm/antenna, jammer {jammer}, "
        f"sum rate {summary.sum_rate_nats:.3f} nats/use, mean MSE {summary.mean_mse:.4g}"
    )
    if summary.aircomp:
        a = summary.aircomp
        console.print(
            f"MSE of the sum: MMSE-SIC {a['sic_sum_mse']:.4g}, AirComp MMSE "
            f"{a['aircomp_mse']:.4g} (mean power {a['aircomp_energy']:.2f} of peak), AirComp "
            f"unbiased {a['aircomp_zf_mse']:.4g}"
        )
