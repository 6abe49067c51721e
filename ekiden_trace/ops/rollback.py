"""The one way back: exec v1 again in the same process and restore its own snapshot.

Used by `update` when a step after the exec fails, and by the guardian when the
tool died in the middle of an update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ekiden_trace.binary.files import same_file
from ekiden_trace.binary.program import Program
from ekiden_trace.errors import EkidenError, describe_failure
from ekiden_trace.plan.planner import UpdatePlan, plan_update
from ekiden_trace.plan.transformers import Transformers
from ekiden_trace.state.control import STOP_SIGNAL_CANDIDATES
from ekiden_trace.state.restore import Restorer, RestoreResult
from ekiden_trace.state.snapshot import Snapshot
from ekiden_trace.target import procfs
from ekiden_trace.target.inject import Injector


@dataclass
class GuardState:
    """What a rollback needs, handed over right after the capture."""

    pid: int
    old_path: str  # v1's image, held open by the tool (and inherited by the guardian)
    old_name: str  # the path v1 was started from, as /proc/PID/exe named it
    snapshot: Snapshot
    point: str
    signo: int
    argv: list[bytes]
    envp: list[bytes]
    cleared: list[int]
    timeout: float
    blocked: frozenset[int]  # the old version's signal mask, at the capture
    ignored: frozenset[int]  # the signals it ignored
    # The program's signals that arrived after the exec, held for the version that runs
    # afterwards: delivered once it stands at its update point, its handlers installed.
    held: list[int] = field(default_factory=list)
    image_fd: int | None = None  # an fd of the process itself on v1's image, when it has one
    staged_old: str | None = None  # v1's staged copy inside the process's root (chrooted)


def roll_back_to(
    injector: Injector,
    old: Program,
    state: GuardState,
    identity: UpdatePlan | None = None,
) -> RestoreResult:
    """Exec v1 again in the same process (through `injector`, made for the image it runs
    now) and restore v1's own snapshot into it; what was restored."""
    identity = identity or plan_update(old, old, Transformers())
    tracee = injector.tracee
    try:
        # The new version may have blocked or ignored signals (the stop signal among them),
        # and a blocked stop signal a mark raised stays pending: an exec keeps all of that.
        stop_signals = set(STOP_SIGNAL_CANDIDATES) - state.blocked
        injector.reset_signals(set(state.blocked), set(state.ignored), stop_signals)
        _exec_old(injector, old, state)
        restorer = Restorer(
            tracee, identity, state.snapshot, Transformers(), state.point, state.signo, state.held
        )
        result = restorer.run(state.timeout)
        restorer.injector.restore_cloexec(state.cleared, own_fds(state))
    except Exception as failure:
        raise EkidenError(
            f"the update failed and so did the rollback ({describe_failure(failure)}); "
            f"process {tracee.pid} "
            "is in an unknown state: restart the service."
        ) from None
    return result


def own_fds(state: GuardState) -> list[int]:
    """The fds the update itself opened in the process, to close when it is over."""
    return [] if state.image_fd is None else [state.image_fd]


def _exec_old(injector: Injector, old: Program, state: GuardState) -> None:
    """Exec the very image v1 ran, whatever its path holds now: its copy staged in the
    process's root (chrooted), the process's own fd on it, or else its path while that
    still names the same file."""
    pid = state.pid
    if state.staged_old is not None:
        injector.exec_in_place(state.staged_old, state.argv, state.envp)
    elif state.image_fd is not None and same_file(procfs.fd_path(pid, state.image_fd), old.path):
        injector.exec_in_place(b"", state.argv, state.envp, fd=state.image_fd)
    elif same_file(procfs.root_path(pid, state.old_name), old.path):
        injector.exec_in_place(state.old_name, state.argv, state.envp)
    else:
        raise EkidenError(
            f"the process no longer holds the old version's file open and {state.old_name} "
            "is now another file (replaced or deleted)"
        )
