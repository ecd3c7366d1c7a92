"""``rmtllmf compare``: a study's results against a reference, cell by cell."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from rmtllmf.cli.common import examples, rich_console


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "compare",
        help="compare a study's results with a reference, cell by cell, within its intervals",
        description="Reads both summary.json files and says, for every cell at the largest N "
        "(each link, scenario and defense, the clean merge, the base model alone), whether the "
        "results' mean lies inside the reference's 95% interval over seeds. A reference of one "
        "seed has no interval: its cells are listed with the difference only. Exit status 0 "
        "either way; --json for scripts.",
        epilog=examples(
            "rmtllmf compare results docs/quick-results",
            "rmtllmf compare results/ reference/summary.json --json",
        ),
    )
    p.add_argument("results", type=Path, metavar="RESULTS", help="study directory or summary.json")
    p.add_argument(
        "reference", type=Path, metavar="REFERENCE", help="the reference study (its intervals)"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="widen each interval by this much on either side, for cells that no seed moves "
        "(default 0.005 normalized accuracy; 0 for bit-identical reruns)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    """Compare and print a table (or JSON) and a one-line verdict."""
    from rmtllmf.report.agreement import TOLERANCE, compare_summaries, read_summary

    tolerance = TOLERANCE if args.tolerance is None else args.tolerance
    cells = compare_summaries(
        read_summary(args.results, "RESULTS"), read_summary(args.reference, "REFERENCE"), tolerance
    )
    counts = {s: sum(c.status == s for c in cells) for s in ("inside", "outside", "no interval")}
    if args.json:
        out = {"tolerance": tolerance, "counts": counts, "cells": [c.to_json() for c in cells]}
        print(json.dumps(out, indent=2))
        return 0
    table = Table(title=f"{args.results} against {args.reference}")
    for name in ("cell", "results", "reference", "95% interval", ""):
        table.add_column(name, justify="right" if name != "cell" else "left")
    for c in cells:
        interval = "-" if c.status == "no interval" else f"[{c.lo:.3f}, {c.hi:.3f}]"
        table.add_row(c.cell, f"{c.value:.3f}", f"{c.reference:.3f}", interval, c.status)
    rich_console(120).print(table)
    print(
        f"{counts['inside']} of {len(cells)} cells inside the reference's 95% intervals "
        f"(each widened by {tolerance:g}), "
        f"{counts['outside']} outside, {counts['no interval']} without an interval "
        "(a one-seed reference)"
    )
    return 0
