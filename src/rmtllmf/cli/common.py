"""What the subcommands share."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache() -> Path:
    """Where built zoos live: ``$RMTLLMF_CACHE`` or ``~/.cache/rmtllmf``."""
    return Path(os.environ.get("RMTLLMF_CACHE", "~/.cache/rmtllmf")).expanduser()
