"""Modules imported on first use, so that commands which never touch them do not pay their
import (torch's is about a second: most of a whole ``rmtllmf merge`` process that runs in the
compiled kernel).

``torch = lazy_module("torch")`` binds a module object whose code runs at the first attribute
access (the standard library's :class:`importlib.util.LazyLoader`); a module imported already
is returned as it is. Type checkers see the real module through ``if TYPE_CHECKING: import
torch``. Submodules are reached through the parent's attributes (``torch.nn.functional``), which
import the parent first.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from types import ModuleType

_LOCK = threading.Lock()


def lazy_module(name: str) -> ModuleType:
    """``name``'s module, its code run at the first attribute access (see the module docs)."""
    with _LOCK:
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        loader = importlib.util.LazyLoader(spec.loader)
        spec.loader = loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)
        return module
