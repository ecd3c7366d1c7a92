"""Project exceptions and warnings.

Every error raised for bad input derives from :class:`RmtllmfError`, names the offending argument
and says how to fix it. Input errors also derive from :class:`ValueError`, so callers that already
catch ``ValueError`` keep working.
"""

from __future__ import annotations


class RmtllmfError(Exception):
    """Base class of every error this project raises on purpose."""


class InputError(RmtllmfError, ValueError):
    """An argument has the wrong shape, type, range or value."""


class DegenerateChannelWarning(UserWarning):
    """A channel configuration makes some quantity infinite (e.g. a noise-free receive dimension).

    The computation goes on with the mathematically correct value (``inf`` rate, zero MSE); the
    warning says which users are affected and how to avoid it (usually: add a thermal floor).
    """


class CheckpointError(RmtllmfError):
    """A checkpoint cannot be read or written: missing, truncated, pickled, or mismatched."""
