"""The ``rmtllmf`` command line."""

from __future__ import annotations

import os

# Shared 2-core machines: spinning OpenMP workers make torch several times slower under
# contention; passive waiting is set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
from collections.abc import Sequence

from rmtllmf.cli import channel, evaluate, finetune, merge, reproduce, zoo
from rmtllmf.errors import RmtllmfError

COMMANDS = {
    "channel": channel,
    "merge": merge,
    "zoo": zoo,
    "finetune": finetune,
    "evaluate": evaluate,
    "reproduce": reproduce,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="rmtllmf", description="Resilient multi-task model fusion over jammed MIMO uplinks."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rmtllmf`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command].run(args))
    except (RmtllmfError, ValueError) as exc:
        print(f"rmtllmf: error: {exc}", file=sys.stderr)
        return 2
