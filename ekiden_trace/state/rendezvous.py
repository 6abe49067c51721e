"""Bring a traced process to an update point, and leave it as it was.

No breakpoint is ever planted: the control block is armed, the process runs
until a mark's slow path reports itself with a signal (see probes/ekiden.h),
and blocking syscalls are nudged with EINTR so idle servers reach their loop
heads quickly.
"""

from __future__ import annotations

import os
import time

from ekiden_trace.errors import EkidenError, TargetExited, WaitTimeout
from ekiden_trace.faults import kill_point
from ekiden_trace.state.control import KIND_POINT, ControlBlock, MarkStop
from ekiden_trace.target.address_space import LiveProcess
from ekiden_trace.target.tracee import Tracee

NUDGE_INTERVAL = 0.2
SHOWN_FRAMES = 4  # how many frames a timeout names, innermost first


def _nudge(tracee: Tracee) -> None:
    if tracee.in_restartable_syscall():
        tracee.nudge_syscall()


def wait_for_point(
    tracee: Tracee,
    control: ControlBlock,
    signo: int,
    point: str | None,
    timeout: float,
    live: LiveProcess | None = None,
) -> MarkStop:
    """Resume a stopped tracee until it stops at update point `point` (any when None).

    Returns with the tracee stopped in the mark's slow path.  Raises
    WaitTimeout when no matching point is reached in time, naming where the
    process is (through `live`, when given); the caller then releases the
    tracee, which leaves it running as before.
    """
    deadline = time.monotonic() + timeout
    control.arm(signo)
    _nudge(tracee)
    tracee.cont()
    kill_point("waiting")
    next_nudge = time.monotonic() + NUDGE_INTERVAL
    group_stopped = False  # by SIGSTOP or job control, until a SIGCONT
    while True:
        now = time.monotonic()
        if now >= deadline:
            wanted = f"update point {point}" if point else "an update point"
            if group_stopped:
                raise WaitTimeout(
                    f"process {tracee.pid} did not reach {wanted} within {timeout:g} s because "
                    f"it is stopped (SIGSTOP or job control); continue it (kill -CONT "
                    f"{tracee.pid}) and run the command again. Nothing was changed."
                )
            raise WaitTimeout(
                f"process {tracee.pid} did not reach {wanted} within {timeout:g} s; it runs on "
                f"untouched.{_where(tracee, live)} Check that the point sits on a path the "
                "program takes (a loop head); a blocking call that retries EINTR by itself "
                "needs an update point in its retry path (see the README); or give a longer "
                "--timeout."
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
        group_stopped = stop.kind == "group" or (group_stopped and stop.kind == "interrupt")
        if stop.kind == "signal":
            tracee.cont(stop.signo)  # a real signal: deliver it as if we were not here
        elif stop.kind == "group":
            tracee.listen()  # stopped by job control: wait for SIGCONT
        else:
            _nudge(tracee)
            tracee.cont()


def _where(tracee: Tracee, live: LiveProcess | None) -> str:
    """ " It is in F (file:line), called from G (file:line), ...": where the process stands
    now, by the unwinder; "" when that cannot be told."""
    if live is None:
        return ""
    try:
        halt(tracee)
        live.stopped(tracee)
        frames = live.frames()[:SHOWN_FRAMES]
    except (EkidenError, OSError):
        return ""
    names = []
    for frame in frames:
        name = live.code_name(frame.lookup_pc)
        if live.region(frame.lookup_pc) == "code":
            index, pc = live.program.index, frame.lookup_pc - live.bias
            line = index.line_at(pc)
            where = f" ({os.path.basename(line[0])}:{line[1]})" if line else ""
            chain = [*index.inline_chain_at(pc), name]  # the line is in the innermost one
            chain[0] += where
            name = ", inlined in ".join(chain)
        names.append(name)
    if not names:
        return ""
    return f" It is in {names[0]}" + "".join(f", called from {n}" for n in names[1:]) + "."


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
