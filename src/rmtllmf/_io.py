"""Files replaced whole: a reader sees the old content or the new, never a half-written file."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path`` (ending in ``.partial`` + ``suffix``, for
    writers that insist on an extension); when the block ends normally the temporary file
    replaces ``path`` in one atomic rename, and when it raises the temporary file is removed
    and ``path`` is untouched. The target's folder is created if needed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial{suffix}"
    try:
        yield tmp
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
