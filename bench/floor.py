"""The floor of an update's pause: exec the new binary in place until its first mark, no state.

Measured with the tool's own mechanism, in this process as the tracer: a fresh
old-version server is stopped at an update point (not timed); then the clock
runs from the start of `exec_in_place` (the injected execve, as `attach` does
it) through arming the new image's control block until the new version
reports its first mark (its first EKIDEN_TAG), which is where the tool would
start writing state.  Nothing is captured or written.  The new version runs its
start-up either freely (PTRACE_CONT: the floor) or with a stop at every system
call (PTRACE_SYSCALL, as the tool's restore runs start-up to catch an exit).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from procs import BenchServer

from ekiden_trace.binary.program import Program
from ekiden_trace.state.backend import program_bias
from ekiden_trace.state.control import STOP_FUNCTION, ControlBlock, choose_stop_signal
from ekiden_trace.state.rendezvous import wait_for_point
from ekiden_trace.target import procfs
from ekiden_trace.target.inject import Injector
from ekiden_trace.target.tracee import Tracee


def exec_to_first_mark(pid: int, old: Program, new: Program, syscall_stops: bool) -> float:
    """Seconds from exec_in_place(new) to new's first mark in process pid (a fresh old
    version, which is left stopped for the caller to kill)."""
    tracee = Tracee.seize(pid)
    bias = program_bias(pid, old)
    control = ControlBlock(tracee, old.marks.control + bias)
    signo = choose_stop_signal(tracee)
    wait_for_point(tracee, control, signo, None, 10.0)
    injector = Injector.for_tracee(tracee, str(old.path), STOP_FUNCTION, bias)
    argv, envp = procfs.cmdline(pid), procfs.environ(pid)
    started = time.monotonic()
    injector.exec_in_place(str(new.path), argv, envp)
    new_control = ControlBlock(tracee, new.marks.control + program_bias(pid, new))
    new_control.arm(signo)
    resume = tracee.syscall if syscall_stops else tracee.cont
    resume()
    while True:
        stop = tracee.wait_stop(10.0)
        if stop.kind in ("exited", "killed"):
            raise RuntimeError(f"the new version died before its first mark ({stop})")
        if stop.kind == "signal" and stop.signo == signo and new_control.pending_stop():
            return time.monotonic() - started
        resume(stop.signo if stop.kind == "signal" and stop.signo != signo else 0)


def floor_sample(
    start: Callable[[], BenchServer], old: Program, new: Program, syscall_stops: bool = False
) -> float:
    """One floor measurement on a freshly started old-version server, killed afterwards."""
    server = start()
    try:
        return exec_to_first_mark(server.pid, old, new, syscall_stops)
    finally:
        os.kill(server.pid, signal.SIGKILL)
        server.stop()
