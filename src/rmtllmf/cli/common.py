"""What the subcommands share: the parser class and help format, error messages, output checks,
and the notices a long command prints before it starts."""

from __future__ import annotations

import argparse
import errno
import os
import re
import sqlite3
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console

from rmtllmf.errors import CheckpointError, InputError, RmtllmfError, validation_message

if TYPE_CHECKING:
    pass


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped, examples as written; every optional flag's help ends with its
    default.

    A flag whose help already says ``default`` keeps its wording (it explains what a ``None``
    default means); a required flag and a switch say so instead.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):  # command lines keep their line breaks
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.default is argparse.SUPPRESS
            or "default" in text
            or "%(default)" in text
        ):
            return text
        if action.required:
            return f"{text} (required)".strip()
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            return f"{text} (default: {'on' if action.default else 'off'})".strip()
        default = action.default
        if isinstance(default, list | tuple):
            shown = " ".join(str(x) for x in default) if default else "none"
        else:
            shown = "none" if default is None else str(default)
        return f"{text} (default: {shown})".strip()


class CliParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line that names the flag and points at ``--help``;
    its subcommands use the same class, the :class:`HelpFormatter` and take ``--debug``. Flags
    are never abbreviated: a prefix (``--jammer``) is an unknown flag, not ``--jammer-dbm``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # a typo such as --jammer is an error
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="on an error, print the full traceback too (off by default)",
        )

    def error(self, message: str) -> NoReturn:
        """One line on stderr: the problem as argparse words it, and where to read more."""
        self.exit(2, f"{self.prog}: error: {one_line(message)}; see {self.prog} --help\n")


def examples(*lines: str) -> str:
    """The ``examples:`` epilog of a subcommand's ``--help``."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def one_line(text: str) -> str:
    """``text`` on one line: line breaks and blank runs become single spaces; library URLs go."""
    text = re.sub(r"\s*For further information visit \S+", "", text)
    return " ".join(text.split())


FIX_WORDS = re.compile(
    r"\b(give|choose|use|drop|fix|add|write|check|run|rerun|pass|convert|re-save|re-download|"
    r"remove|see|install|merge|select|set|pick|leave|build|delete|rename)\b",
    re.IGNORECASE,
)
"""Words with which a message says what to do; a message without one gets a hint."""


def error_message(
    exc: BaseException, flags: Mapping[str, str] | None = None, command: str = "rmtllmf"
) -> tuple[str, int]:
    """What ``rmtllmf`` prints for an exception, and its exit status.

    Bad input (project errors, ``ValueError`` including pydantic's, missing or unwritable
    files) gives status 2 and a message in the user's words: ``flags`` maps config field names
    to the flags that set them (``n_users`` -> ``--users``); anything else is an internal error
    (status 1) that asks for ``--debug``.
    """
    from pydantic import ValidationError

    names = dict(flags or {})
    if isinstance(exc, RmtllmfError | ValueError):
        if isinstance(exc, ValidationError):
            text = f"{validation_message(exc, names)}; fix the value (see {command} --help)"
        else:
            text = str(exc)
        for field, flag in names.items():
            # plain words ("steps") also occur in prose, snake_case names don't; a message that
            # already names the flag keeps its wording
            if "_" in field and flag not in text:
                text = re.sub(rf"\b{re.escape(field)}\b", flag, text)
        if not FIX_WORDS.search(text):
            fix = (
                "re-save or re-download that checkpoint, or give another"
                if isinstance(exc, CheckpointError)
                else f"see {command} --help"
            )
            text = f"{text.rstrip('. ')}; {fix}"
        return one_line(text), 2
    if isinstance(exc, OSError):
        return one_line(_os_error(exc)), 2
    if isinstance(exc, sqlite3.OperationalError) and _SQLITE_USER.search(str(exc)):
        return one_line(
            f"the results database cannot be written ({exc}); free space on its disk or give "
            "--out on another one, then rerun: finished runs are kept"
        ), 2
    text = one_line(f"{type(exc).__name__}: {exc}")
    return f"internal error ({text}); rerun with --debug for the traceback and report it", 1


_SQLITE_USER = re.compile(r"disk is full|disk I/O error|readonly database|unable to open", re.I)
"""SQLite errors that come from the disk or the path, not from the code."""


_PARTIAL = re.compile(r"(^|/)\.([^/]+)\.\d+\.[0-9a-f]{8}\.(partial|old)[^/]*$")
"""A temporary name of :mod:`rmtllmf._io` (``.NAME.PID.XXXXXXXX.partial``): shown as NAME."""


def _os_error(exc: OSError) -> str:
    """A file-system error in the user's words: what, where (when known; the target's name, not
    a temporary one), what to do."""
    shown = _PARTIAL.sub(r"\1\2", str(exc.filename)) if exc.filename else ""
    where = f" {shown}" if shown else ""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return (
            f"the disk is full (no space left on device{', writing' + where if where else ''}); "
            "nothing half-written was kept: free space there or write to another disk"
        )
    what = exc.strerror or str(exc) or type(exc).__name__
    hint = {
        PermissionError: "choose a location you may write to, or fix its permissions",
        FileNotFoundError: "check the path",
        FileExistsError: "choose another path or remove the existing one",
        IsADirectoryError: "give a file, not a directory",
        NotADirectoryError: "a part of the path is a file, not a directory",
    }.get(type(exc), "check the path, its permissions and the free space")
    return f"{what}{':' + where if where else ''}; {hint}"


def check_output_dir(path: Path, flag: str = "--out") -> Path:
    """``path`` as an output directory: refused, before any work, when it is a file or when it
    (or the nearest folder above it that exists) cannot be written."""
    if path.exists() and not path.is_dir():
        raise InputError(
            f"{flag} {path} is a file, not a directory; give a directory (new or existing)"
        )
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"{flag} {path}: {probe} is a file; give a path under a directory")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(
            f"{flag} {path}: {probe} is read-only; choose a directory you may write to"
        )
    return path


def set_threads(threads: int | None) -> None:
    """torch's threads: ``--threads`` when given (at least 1), else one per core."""
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads} is below 1; give 1 or more, or leave it out")
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)


def check_out_given(path: Path, flag: str = "--out") -> Path:
    """An output path that is not empty text (``--out ""`` would write into the current
    directory)."""
    if not str(path).strip() or str(path) == ".":
        raise InputError(
            f"{flag} is empty or the current directory; give a directory of its own, e.g. "
            f"{flag} results"
        )
    return path


class _Console(Console):
    """rich's console, except that a reader closing the pipe (``| head``) ends the command as
    any other output does (``cli.main``: quietly, status 141), not with rich's status 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def rich_console(width: int) -> Console:
    """The console tables print on: the terminal's width, or ``width`` columns into a pipe."""
    return _Console(width=None if sys.stdout.isatty() else width)
