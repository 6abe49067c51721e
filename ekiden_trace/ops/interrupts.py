"""Ctrl-C, SIGTERM and SIGHUP abort an operation cleanly instead of killing the tool.

The first such signal raises `Interrupted` (an EkidenError) where the tool
stands, so the normal error paths run: before the exec the target is released
as it was, after it the update is rolled back.  Further signals are ignored
until that cleanup is over.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from ekiden_trace.errors import EkidenError

ABORT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(EkidenError):
    """The user asked the tool to stop."""

    exit_code = 130


@contextmanager
def aborting_on_signals() -> Iterator[None]:
    """Turn the first abort signal into an Interrupted exception; ignore later ones."""

    def handler(signo: int, _frame: FrameType | None) -> None:
        for sig in ABORT_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(f"interrupted by {signal.Signals(signo).name}")

    previous = {sig: signal.signal(sig, handler) for sig in ABORT_SIGNALS}
    try:
        yield
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)
