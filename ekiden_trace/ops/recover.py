"""A process left in the middle of an update: recognised by every command, and
`recover` to roll it back.

When the tool and its guardian both die after the exec (the OOM killer may take
both), the new version waits in a mark, half-restored, for a guardian that never
comes (`guarded` in its control block).  Nothing may answer its marks then: an
`inspect` would let it run on with part of its state.  `recover` does what the
guardian would have done, from the state file the tool handed it, which is kept
until the update is settled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from ekiden_trace.binary.files import held_descriptor
from ekiden_trace.binary.program import Program
from ekiden_trace.errors import EkidenError, TargetError
from ekiden_trace.ops.guardian import guard_dir, log_path, read_state, rescue
from ekiden_trace.ops.lock import locked
from ekiden_trace.ops.preflight import program_of
from ekiden_trace.ops.rollback import GuardState
from ekiden_trace.state.control import ControlBlock, guarded_at
from ekiden_trace.state.rendezvous import leave
from ekiden_trace.target import procfs
from ekiden_trace.target.address_space import LiveProcess
from ekiden_trace.target.images import load_bias
from ekiden_trace.target.tracee import Tracee, check_traceable


class MidUpdate(EkidenError):
    """The process waits in the middle of an update that nobody finishes."""

    exit_code = 13


def refuse_mid_update(control: ControlBlock, pid: int) -> None:
    """MidUpdate when the process (seized, its control block checked) was left in the
    middle of an update; it must then be released as it is, its marks untouched."""
    if control.is_guarded():
        raise _mid_update(pid)


def check_not_mid_update(pid: int, program: Program) -> None:
    """MidUpdate, before anything else is read or planned, when process `pid` (running
    `program`, not traced) was left in the middle of an update."""
    bias = load_bias(pid, program.path)
    if bias is not None and guarded_at(pid, program.marks.control + bias):
        raise _mid_update(pid)


def _mid_update(pid: int) -> MidUpdate:
    return MidUpdate(
        f"process {pid} is in the middle of an update that no tool finishes: it waits in a "
        "mark of its new version, half-restored, and nothing was changed. Run "
        f"`ekiden-trace recover {pid}` to roll it back to its old version with its state."
    )


@dataclass(frozen=True)
class Recovered:
    """What `recover` did: rolled back (True), or found nothing to do (False)."""

    pid: int
    rolled_back: bool
    old: str


def _state_files(pid: int) -> list[Path]:
    """The state files tools handed their guardians for process `pid`, newest first."""
    found = guard_dir().glob(f"{pid}-*.pickle")
    return sorted(found, key=lambda path: path.stat().st_mtime, reverse=True)


def _guarded(pid: int) -> bool:
    """Whether process `pid` waits in the middle of an update (seizes it for a moment)."""
    program = program_of(pid)
    live = LiveProcess(pid, program)
    tracee = Tracee.seize(pid)
    try:
        control = ControlBlock(tracee, program.marks.control + live.bias)
        control.check()
        return control.is_guarded()
    finally:
        leave(tracee, None)  # its marks stay as they are


def _reachable(state: GuardState) -> GuardState:
    """The state with a path to v1's image that this process can open: the dead tool held
    the image open (/proc/self/fd/N was its own fd), the target holds it too."""
    if held_descriptor(state.old_path) is None:
        return state
    if state.image_fd is not None and os.path.exists(procfs.fd_path(state.pid, state.image_fd)):
        return replace(state, old_path=procfs.fd_path(state.pid, state.image_fd))
    return replace(state, old_path=state.old_name)


@locked
def recover(pid: int) -> Recovered:
    """Roll process `pid` back to its old version with its state, when a tool and its
    guardian left it in the middle of an update."""
    check_traceable(pid)  # also says when a guardian is tracing it right now
    files = _state_files(pid)
    if not _guarded(pid):
        if files:  # a dead tool's leftovers, e.g. fds still without FD_CLOEXEC
            rescue(_reachable(read_state(files[0])))
        for path in files:
            path.unlink(missing_ok=True)
        return Recovered(pid, False, "")
    if not files:
        raise MidUpdate(
            f"process {pid} is in the middle of an update, but the state its tool handed to "
            f"the guardian is gone (no {pid}-*.pickle in {guard_dir()}), so its old state "
            "cannot be brought back; what can still be done is to restart the service (its "
            f"clients' connections are lost). The guardian's log, if any: {log_path(pid)}."
        )
    state = _reachable(read_state(files[0]))
    if not rescue(state):
        raise TargetError(f"process {pid} could not be rolled back; restart the service.")
    for path in files:
        path.unlink(missing_ok=True)
    return Recovered(pid, True, state.old_path)
