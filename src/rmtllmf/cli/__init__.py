"""The ``rmtllmf`` command line.

Errors are one line on stderr, ``rmtllmf: error: <what was wrong>; <what to do>``, with exit
status 2 for bad input (flags, files, configs) and 1 for anything unexpected; ``--debug``
prints the traceback as well, and Ctrl-C exits with 130.
"""

from __future__ import annotations

import os

# Shared 2-core machines: spinning OpenMP workers make torch several times slower under
# contention; passive waiting is set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
import traceback
from collections.abc import Sequence

from rmtllmf import __version__
from rmtllmf.cli import channel, compare, evaluate, export, finetune, merge, reproduce, zoo
from rmtllmf.cli.common import CliParser, error_message

COMMANDS = {
    "channel": channel,
    "merge": merge,
    "zoo": zoo,
    "finetune": finetune,
    "evaluate": evaluate,
    "reproduce": reproduce,
    "export": export,
    "compare": compare,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = CliParser(
        prog="rmtllmf",
        description="Resilient multi-task model fusion over jammed MIMO uplinks (R-MTLLMF).",
        epilog="Run 'rmtllmf COMMAND --help' for what a command does, its flags and examples.",
    )
    parser.add_argument("--version", action="version", version=f"rmtllmf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rmtllmf`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or bool(os.environ.get("RMTLLMF_DEBUG"))
    module = COMMANDS[args.command]
    try:
        status = int(module.run(args))
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except KeyboardInterrupt:
        print("rmtllmf: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader (e.g. `| head`) closed the pipe: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:
        if debug:
            traceback.print_exc()
        command = " ".join(
            ["rmtllmf", args.command, *filter(None, [getattr(args, "zoo_command", None)])]
        )
        message, status = error_message(exc, getattr(module, "FLAGS", None), command)
        print(f"rmtllmf: error: {message}", file=sys.stderr)
        return status
