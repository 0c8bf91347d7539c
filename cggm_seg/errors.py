"""Errors a user reads: the cause of a failed bundle run on the last lines of the output.

MONAI's bundle parser wraps an error raised while it evaluates a config expression (a dataset
check that fails, a setting out of range) in ``RuntimeError: Failed to evaluate
ConfigExpression``, and prints the cause in the middle of a long chained traceback. The bundles
(first thing in their ``initialize``) and the ``cggm-seg`` command call :func:`install_excepthook`,
which installs :func:`summarising_excepthook`: it prints the usual traceback and then, when the
error came wrapped, the cause again as the final lines::

    cggm_seg: the run stopped: ValueError: rho must be a positive finite number, got 0.0.

Only the default ``sys.excepthook`` is replaced (an interactive shell or a debugger keeps its
own); ``CGGM_SEG_PLAIN_ERRORS=1`` keeps Python's default.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

__all__ = ["root_cause", "summarising_excepthook", "install_excepthook"]


def root_cause(error: BaseException) -> BaseException:
    """The exception that ended a run whose last exception is ``error``.

    Explicit causes (``raise ... from cause``) are followed to the innermost one: that is how
    MONAI's bundle parser wraps an error (``RuntimeError: Failed to evaluate ConfigExpression``,
    ``Failed to instantiate component``, ``KeyError: query key``). An exception that was only
    being handled when another was raised (``__context__``) is not followed: it is what the code
    was recovering from, not what stopped it (``Path.mkdir(parents=True)`` under a read-only
    folder raises ``PermissionError`` while handling the ``FileNotFoundError`` of the folder
    below).

    Args:
        error: the exception that reached the top of the program.

    Returns:
        The innermost explicit cause of ``error``, or ``error`` itself when it has none; a chain
        that loops back ends at the last exception before the loop.
    """
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        error = error.__cause__
        seen.add(id(error))
    return error


def summarising_excepthook(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    """``sys.excepthook`` that repeats a wrapped error's cause after the traceback."""
    sys.__excepthook__(kind, error, traceback)
    cause = root_cause(error)
    if cause is not error and not isinstance(cause, KeyboardInterrupt):
        message = str(cause).strip() or "(no message)"
        print(f"\ncggm_seg: the run stopped: {type(cause).__name__}: {message}", file=sys.stderr, flush=True)


def install_excepthook() -> None:
    """Install :func:`summarising_excepthook` where Python's default hook is in place."""
    if os.environ.get("CGGM_SEG_PLAIN_ERRORS") == "1":
        return
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = summarising_excepthook
