"""Files replaced whole, and output directories that a command owns.

Writes: a reader sees the old content or the new, never a half-written file.

Ownership, the one rule for every command that writes a directory: an output directory is
new, empty, or one that the same command wrote before (recognised by the mark it left,
:data:`OWNER_MARK`); any other directory is refused before any work unless the user passes
``--force``, and even then only the files the command writes are replaced: nothing else in the
directory is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from rmtllmf.errors import InputError


def _read_umask() -> int:
    """The process's umask: from ``/proc`` where Linux shows it, else by setting and restoring
    it (once, at import)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
"""Files published by :func:`atomic_output` get ``0o666 & ~umask`` (0644 under the usual 022),
the mode a plain ``open`` gives, whatever mode their writer created them with (safetensors and
``mkstemp`` create 0600, which hid records from the group)."""


@contextmanager
def atomic_output(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path`` (ending in ``.partial`` + ``suffix``, for
    writers that insist on an extension); when the block ends normally the temporary file
    replaces ``path`` in one atomic rename, and when it raises the temporary file is removed
    and ``path`` is untouched. The target's folder is created if needed. The published file is
    readable as a plain ``open`` would make it (``0o666 & ~umask``), whatever its writer did."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial{suffix}"
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_output`. Worker processes of one sweep
    read the cache records (``zoo.json``) that another may be rewriting; with a plain write they
    could read an empty or truncated file."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


OWNER_MARK = ".rmtllmf-output.json"
"""The mark a command leaves in a directory it writes: ``{"command": NAME, "files": [...]}``,
the files it wrote there (relative paths; only commands that replace whole directories list
them)."""


def directory_owner(path: str | Path) -> tuple[str | None, frozenset[str]]:
    """The command that wrote directory ``path`` and the files it listed (``(None, {})`` for a
    directory without a readable mark)."""
    try:
        mark = json.loads((Path(path) / OWNER_MARK).read_text(encoding="utf-8"))
        command = mark["command"]
        files = frozenset(str(f) for f in mark.get("files", ()))
    except (OSError, ValueError, KeyError, TypeError):
        return None, frozenset()
    return (command, files) if isinstance(command, str) else (None, frozenset())


def _listing(path: Path) -> list[str]:
    """The entries of ``path`` that a user may have put there (the mark excluded)."""
    return sorted(e.name for e in path.iterdir() if e.name != OWNER_MARK)


def check_output_dir_owner(
    path: str | Path, command: str, *, force: bool = False, flag: str = "--out"
) -> Path:
    """``path`` as ``command``'s output directory (nothing is written here): new, empty, or
    marked by ``command``; else :class:`~rmtllmf.errors.InputError` naming what it holds and
    the fixes (another directory, or ``--force``, which still replaces only the command's own
    files)."""
    target = Path(path)
    if not target.is_dir():
        return target
    entries = _listing(target)
    owner, _ = directory_owner(target)
    if force or not entries or owner == command:
        return target
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    whose = (
        f"was written by rmtllmf {owner}"
        if owner is not None
        else f"holds files that rmtllmf {command} did not write ({shown})"
    )
    raise InputError(
        f"{flag} {target} {whose}; give a new or empty directory, or add --force to write into "
        "it anyway (only files of the names it writes can be replaced; nothing else is touched)"
    )


def mark_output_dir(path: str | Path, command: str, files: Iterable[str] | None = None) -> Path:
    """Create ``path`` if needed and mark it as ``command``'s output (see
    :func:`check_output_dir_owner`); ``files`` lists what the command wrote there."""
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    mark: dict[str, object] = {"command": command}
    if files is not None:
        mark["files"] = sorted(files)
    if files is not None or directory_owner(target)[0] != command:
        write_text_atomic(target / OWNER_MARK, json.dumps(mark, indent=1))
    return target


def _files_under(root: Path) -> list[str]:
    """Every regular file below ``root``, as paths relative to it."""
    return sorted(str(f.relative_to(root)) for f in root.rglob("*") if f.is_file())


def _user_entries(old: Path, new: Path, *, force: bool) -> list[str]:
    """The top-level entries of ``old`` that the command did not write (not listed in its
    mark) and that replacing ``old`` by ``new`` must keep. An entry of the same name as one the
    command just wrote is an error, unless ``force``: then it goes with ``old``."""
    ours = {f.split("/", 1)[0] for f in directory_owner(old)[1]} | {OWNER_MARK}
    keep = []
    for name in _listing(old):
        if name in ours:
            continue
        if (new / name).exists() or (new / name).is_symlink():
            if force:
                continue
            raise InputError(
                f"{old} holds {name}, which rmtllmf did not write and the new output would "
                "replace; move it away or give another output directory (or add --force to "
                "replace it)"
            )
        keep.append(name)
    return keep


def _move(names: Iterable[str], src: Path, dst: Path) -> None:
    """Rename each entry ``names`` of ``src`` into ``dst`` (same file system: no copy)."""
    for name in names:
        os.rename(src / name, dst / name)


@contextmanager
def atomic_directory(
    path: str | Path, command: str | None = None, *, force: bool = False
) -> Iterator[Path]:
    """Yield a fresh, empty temporary directory beside ``path`` (``.NAME.PID.XXXX.partial``);
    when the block ends normally it becomes ``path`` by a rename, and when it raises it is
    removed and ``path`` is untouched. An existing directory at ``path`` is moved aside, replaced
    and only then deleted, so a reader sees the old directory or the new one (or, for the instant
    between the two renames, none), never a half-written one. If another process publishes
    ``path`` meanwhile, its directory is kept and :class:`FileExistsError` is raised.

    With ``command``, the new directory is marked as that command's output with the files it
    holds (:func:`mark_output_dir`), and whatever the old directory holds that the command did
    not write (files a user added) is moved into the new one before the swap, and back if the
    swap fails: nothing of the user's is deleted. A user's file of the same name as a new one
    is an error, unless ``force``: then the new file wins."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    stem = f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp = target.parent / f"{stem}.partial"
    tmp.mkdir()
    keep: list[str] = []
    try:
        yield tmp
        old = target.parent / f"{stem}.old"
        if command is not None:
            mark_output_dir(tmp, command, _files_under(tmp))
        moved = False
        if target.is_dir() and not target.is_symlink():
            if command is not None:
                keep = _user_entries(target, tmp, force=force)
            _move(keep, target, tmp)
            os.rename(target, old)
            moved = True
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if moved:
                try:
                    os.rename(old, target)
                except OSError:
                    shutil.rmtree(old, ignore_errors=True)
            raise FileExistsError(
                f"{target} was written by another process meanwhile; it was left as that "
                "process wrote it"
            ) from exc
        if moved:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if target.is_dir():  # the user's entries go back where they were
            _move(
                [n for n in keep if (tmp / n).exists() and not (target / n).exists()], tmp, target
            )
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Closing(ABC):
    """Context-manager protocol for an object that holds something to release (files, worker
    processes): ``with`` calls :meth:`close`."""

    @abstractmethod
    def close(self) -> None:
        """Release what the object holds."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def default_cache() -> Path:
    """Where built zoos live: ``$RMTLLMF_CACHE`` or ``~/.cache/rmtllmf``."""
    return Path(os.environ.get("RMTLLMF_CACHE", "~/.cache/rmtllmf")).expanduser()
