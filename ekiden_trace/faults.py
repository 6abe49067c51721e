"""Fault injection for tests.

EKIDEN_TRACE_FAULT=PHASE makes the tool fail (an error) at PHASE, once per run, and
EKIDEN_TRACE_FAULT=PHASE! fail there as a bug would (a RuntimeError, not an EkidenError);
EKIDEN_TRACE_KILL_AT=PHASE makes it SIGKILL itself there, to test what a dying
tool leaves behind; EKIDEN_TRACE_SLOW_AT=PHASE:SECONDS makes it sleep there,
once per run, to let something happen in the middle of an update (it says so
on stderr first, so that a test knows when).  Kill and
slow phases: planned, attached, waiting, captured, cloexec, exec, restore, detach;
and rescue, in the guardian.  EKIDEN_TRACE_KILL_GUARDIAN_AT=PHASE makes the tool
SIGKILL its guardian there (before it dies itself, when both are asked for).
"""

from __future__ import annotations

import os
import signal
import sys
import time

from ekiden_trace.errors import EkidenError

ENV = "EKIDEN_TRACE_FAULT"
KILL_ENV = "EKIDEN_TRACE_KILL_AT"
SLOW_ENV = "EKIDEN_TRACE_SLOW_AT"
GUARDIAN_KILL_ENV = "EKIDEN_TRACE_KILL_GUARDIAN_AT"
_fired: set[str] = set()
_guardians: list[int] = []


def guardian_started(pid: int) -> None:
    """Register the tool's guardian, for EKIDEN_TRACE_KILL_GUARDIAN_AT."""
    _guardians.append(pid)


class InjectedFault(EkidenError):
    """A failure requested through EKIDEN_TRACE_FAULT, to test error paths."""


def fault_point(phase: str) -> None:
    """Fail here, once per run, when the environment asks for a fault at `phase`."""
    asked = os.environ.get(ENV)
    if asked in (phase, phase + "!") and phase not in _fired:
        _fired.add(phase)
        if asked.endswith("!"):
            raise RuntimeError(f"a bug was injected at {phase} ({ENV}={asked})")
        raise InjectedFault(f"a fault was injected at {phase} ({ENV}={phase}).")


def kill_point(phase: str) -> None:
    """Die here, as abruptly as a crash, when the environment asks for it; or sleep here
    first, once per run (EKIDEN_TRACE_SLOW_AT)."""
    slow_phase, _, seconds = os.environ.get(SLOW_ENV, "").partition(":")
    if slow_phase == phase and f"slow:{phase}" not in _fired:
        _fired.add(f"slow:{phase}")
        print(f"ekiden-trace: slowed at {phase} ({SLOW_ENV})", file=sys.stderr, flush=True)
        time.sleep(float(seconds))
    if os.environ.get(GUARDIAN_KILL_ENV) == phase:
        for pid in _guardians:
            os.kill(pid, signal.SIGKILL)
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped
    if os.environ.get(KILL_ENV) == phase:
        os.kill(os.getpid(), signal.SIGKILL)
