"""Joining a Ray cluster that ``ray start`` made: its token, and why a connection failed.

Since Ray 2.59 a local ``ray.init()`` generates a token in ``~/.ray/auth_token`` (so does
``ray get-auth-token --generate``), and ``ray start --head`` turns token authentication on for
its cluster whenever a token is at hand there (or in ``RAY_AUTH_TOKEN`` /
``RAY_AUTH_TOKEN_PATH``), while every other Ray process (a second ``ray start --address``, a
driver's ``ray.init(address=...)``) sends the token only when ``RAY_AUTH_MODE=token`` is set in
its environment *before Ray is imported*. Without it the cluster answers ``InvalidAuthToken``
and ``ray.init`` gives up with a bare ``ConnectionError`` ("Failed to connect"), which reads
like a cluster that is not there. A driver in token mode
also joins a cluster without authentication, so when the user has not chosen a mode and a
token is at hand, :func:`token_auth_env` chooses token mode (what Ray 2.61 does by default);
an explicit ``RAY_AUTH_MODE`` is left as it is. :func:`join_error` names the real cause of a
failed join: nothing listening at the address, or a cluster that refused this process.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import MutableMapping
from pathlib import Path

from rmtllmf.errors import InputError

DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")
"""Where ``ray start --head`` (and ``ray get-auth-token --generate``) keep the token."""


def token_source(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Where Ray would read its token from, in Ray's order (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``), or ``None`` when there is none."""
    if environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return path if Path(path).expanduser().is_file() else None
    default = DEFAULT_TOKEN_FILE.expanduser()
    return str(default) if default.is_file() else None


def token_auth_env(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set ``RAY_AUTH_MODE=token`` in ``environ`` when it is unset, a token is at hand and Ray
    is not imported yet (Ray reads the mode once, at import); returns whether it did."""
    if "RAY_AUTH_MODE" in environ or "ray" in sys.modules or token_source(environ) is None:
        return False
    environ["RAY_AUTH_MODE"] = "token"
    return True


def address_answers(address: str, timeout: float = 2.0) -> bool | None:
    """Whether something accepts TCP connections at ``HOST:PORT`` (``None`` for an address
    that is not one, such as ``auto`` or ``ray://...``)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in host:
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def join_error(
    address: str, exc: BaseException, environ: MutableMapping[str, str] = os.environ
) -> InputError:
    """The error for a failed ``ray.init(address=...)``, naming its cause and the fix."""
    answers = address_answers(address)
    if answers is False:
        return InputError(
            f"no Ray cluster answers at --address {address} (nothing accepts connections "
            "there); start one with `ray start --head --port PORT` (it prints the address), "
            "check the host and port, or drop --address to run a local Ray"
        )
    mode = environ.get("RAY_AUTH_MODE", "disabled (unset)")
    source = token_source(environ)
    token = f"the token from {source}" if source else "no token (none was found)"
    if mode != "token" or source is None:
        cause = (
            f"this process runs with RAY_AUTH_MODE={mode} and {token}, and a head started by "
            "`ray start --head` where a token was at hand (Ray 2.59 and later) asks for it"
        )
    else:
        cause = (
            f"this process sent {token}; a token that differs from the head's, or Ray "
            "versions that differ between this process and the cluster, are refused"
        )
    return InputError(
        f"the Ray cluster at --address {address} did not accept this process ({exc}): {cause}; "
        "run rmtllmf and every `ray start --address` with RAY_AUTH_MODE=token and the head's "
        "token in ~/.ray/auth_token (or RAY_AUTH_TOKEN; `ray get-auth-token` on the head "
        "prints it), or start the head with RAY_AUTH_MODE=disabled"
    )
