"""Files replaced whole: a reader sees the old content or the new, never a half-written file."""

from __future__ import annotations

import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self


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


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a fresh, empty temporary directory beside ``path`` (``.NAME.PID.XXXX.partial``);
    when the block ends normally it becomes ``path`` by a rename, and when it raises it is
    removed and ``path`` is untouched. An existing directory at ``path`` is moved aside, replaced
    and only then deleted, so a reader sees the old directory or the new one (or, for the instant
    between the two renames, none), never a half-written one. If another process publishes
    ``path`` meanwhile, its directory is kept and :class:`FileExistsError` is raised."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    stem = f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp = target.parent / f"{stem}.partial"
    tmp.mkdir()
    try:
        yield tmp
        old = target.parent / f"{stem}.old"
        moved = False
        if target.is_dir() and not target.is_symlink():
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
