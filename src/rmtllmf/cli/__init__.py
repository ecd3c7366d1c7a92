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
import importlib
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

from rmtllmf import __version__
from rmtllmf.cli.common import CliParser, error_message

COMMANDS = ("channel", "merge", "zoo", "finetune", "evaluate", "reproduce", "export", "compare")
"""The subcommands, each the module ``rmtllmf.cli.<name>`` (``add_parser`` and ``run``)."""


def command_module(name: str) -> ModuleType:
    """The module of subcommand ``name``, imported on demand: a command pays only for its
    own imports (``rmtllmf merge`` of linear merges never loads torch)."""
    return importlib.import_module(f"rmtllmf.cli.{name}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every subcommand, or with subcommand ``only`` alone."""
    parser = CliParser(
        prog="rmtllmf",
        description="Resilient multi-task model fusion over jammed MIMO uplinks (R-MTLLMF).",
        epilog="Run 'rmtllmf COMMAND --help' for what a command does, its flags and examples.",
    )
    parser.add_argument("--version", action="version", version=f"rmtllmf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS if only is None else (only,):
        command_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rmtllmf`` console script; returns the exit status."""
    given = list(sys.argv[1:] if argv is None else argv)
    only = given[0] if given and given[0] in COMMANDS else None
    args = build_parser(only).parse_args(given)
    debug = getattr(args, "debug", False) or bool(os.environ.get("RMTLLMF_DEBUG"))
    module = command_module(args.command)
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
