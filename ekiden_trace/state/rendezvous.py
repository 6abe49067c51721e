"""Bring a traced process to an update point, and leave it as it was.

No breakpoint is ever planted: the control block is armed, the process runs
until a mark's slow path reports itself with a signal (see probes/ekiden.h),
and blocking syscalls are nudged with EINTR so idle servers reach their loop
heads quickly.
"""

from __future__ import annotations

import time

from ekiden_trace.errors import TargetExited, WaitTimeout
from ekiden_trace.faults import kill_point
from ekiden_trace.state.control import KIND_POINT, ControlBlock, MarkStop
from ekiden_trace.target.tracee import Tracee

NUDGE_INTERVAL = 0.2


def _nudge(tracee: Tracee) -> None:
    if tracee.in_restartable_syscall():
        tracee.nudge_syscall()


def wait_for_point(
    tracee: Tracee, control: ControlBlock, signo: int, point: str | None, timeout: float
) -> MarkStop:
    """Resume a stopped tracee until it stops at update point `point` (any when None).

    Returns with the tracee stopped in the mark's slow path.  Raises
    WaitTimeout when no matching point is reached in time; the caller then
    releases the tracee, which leaves it running as before.
    """
    deadline = time.monotonic() + timeout
    control.arm(signo)
    _nudge(tracee)
    tracee.cont()
    kill_point("waiting")
    next_nudge = time.monotonic() + NUDGE_INTERVAL
    while True:
        now = time.monotonic()
        if now >= deadline:
            wanted = f"update point {point}" if point else "an update point"
            raise WaitTimeout(
                f"process {tracee.pid} did not reach {wanted} within {timeout:g} s; it runs on "
                "untouched. Check that the point sits on a path the program takes (a loop head), "
                "or give a longer --timeout."
            )
        try:
            stop = tracee.wait_stop(min(deadline, next_nudge) - now)
        except WaitTimeout:
            if time.monotonic() >= next_nudge:
                # Blocked again somewhere: interrupt, nudge, and let it run on.
                tracee.interrupt()
                next_nudge = time.monotonic() + NUDGE_INTERVAL
            continue
        if stop.kind in ("exited", "killed"):
            raise TargetExited(f"process {tracee.pid} ended while ekiden-trace waited for it.")
        if stop.kind == "signal" and stop.signo == signo:
            reported = control.pending_stop()
            if reported is not None:
                control.take_stop()
                if reported.kind == KIND_POINT and point in (None, reported.what):
                    return reported
                control.arm(signo)
                tracee.cont()
                continue
        if stop.kind == "signal":
            tracee.cont(stop.signo)  # a real signal: deliver it as if we were not here
        elif stop.kind == "group":
            tracee.listen()  # stopped by job control: wait for SIGCONT
        else:
            _nudge(tracee)
            tracee.cont()


def halt(tracee: Tracee) -> None:
    """Bring a running tracee to a ptrace stop where it is (no-op when already stopped)."""
    if tracee.stopped or not tracee.alive:
        return
    tracee.interrupt()
    tracee.wait_stop(5.0)


def leave(tracee: Tracee, control: ControlBlock | None) -> None:
    """Disarm the marks and detach, leaving the process running as before. Never raises."""
    try:
        if control is not None and tracee.alive:
            control.disarm()
    except OSError:
        pass
    tracee.release()
