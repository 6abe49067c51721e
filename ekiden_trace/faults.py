"""Fault injection for tests.

EKIDEN_TRACE_FAULT=PHASE makes the tool fail (an error) at PHASE, once per run;
EKIDEN_TRACE_KILL_AT=PHASE makes it SIGKILL itself there, to test what a dying
tool leaves behind.  Kill phases: attached, waiting, captured, cloexec, exec,
restore, detach.
"""

from __future__ import annotations

import os
import signal

from ekiden_trace.errors import EkidenError

ENV = "EKIDEN_TRACE_FAULT"
KILL_ENV = "EKIDEN_TRACE_KILL_AT"
_fired: set[str] = set()


class InjectedFault(EkidenError):
    """A failure requested through EKIDEN_TRACE_FAULT, to test error paths."""


def fault_point(phase: str) -> None:
    """Fail here, once per run, when the environment asks for a fault at `phase`."""
    if os.environ.get(ENV) == phase and phase not in _fired:
        _fired.add(phase)
        raise InjectedFault(f"a fault was injected at {phase} ({ENV}={phase}).")


def kill_point(phase: str) -> None:
    """Die here, as abruptly as a crash, when the environment asks for it."""
    if os.environ.get(KILL_ENV) == phase:
        os.kill(os.getpid(), signal.SIGKILL)
