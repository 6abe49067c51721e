"""Python side of syscalls.c: step a tracee over the system-call stops nobody watches."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Collection
from functools import cache

from ekiden_trace.native.build import Signatures, core, declare

TIMEOUT, GONE, ERROR, INTERRUPTED = -1, -2, -3, -4
RUNNING, SYSCALL, CONT = 0, 1, 2  # how the first resume is made
_SYSCALLS = 512  # above every x86-64 system-call number


@cache
def _bitmap(watched: frozenset[int]) -> bytes:
    return bytes(nr in watched for nr in range(_SYSCALLS))


_SIGNATURES: Signatures = {
    "ek_syscalls_run": (
        ctypes.c_int,
        (ctypes.c_int, ctypes.c_char_p, ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_int64),
    )
}


@cache
def _runner() -> Callable[..., int] | None:
    library = core()
    return None if library is None else declare(library, _SIGNATURES).ek_syscalls_run


def run_syscalls(
    pid: int, watched: Collection[int], first_cont: bool, signo: int, deadline: float
) -> int | None:
    """Resume `pid` and step over its system-call stops in C until another stop or the
    entry of a `watched` call: its wait status, or TIMEOUT, GONE or ERROR.  None when
    the compiled core is unavailable (the caller steps in Python).  `deadline` is a
    time.monotonic() value; SIGCHLD must be blocked.  A signal for the tool meanwhile
    runs its Python handler (which may raise, the process left running) as it would
    in a Python wait."""
    run = _runner()
    if run is None:
        return None
    bitmap = _bitmap(frozenset(watched))
    resume = CONT if first_cont else SYSCALL
    while True:
        status = run(pid, bitmap, len(bitmap), resume, signo, int(deadline * 1e9))
        if status != INTERRUPTED:
            return status
        # Python runs the tool's pending signal handlers at the next bytecode: one that
        # raises leaves this loop with the process running, as a Python wait would.
        resume, signo = RUNNING, 0
