"""The one way back: exec v1 again in the same process and restore its own snapshot.

Used by `update` when a step after the exec fails, and by the guardian when the
tool died in the middle of an update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ekiden_trace.binary.program import Program
from ekiden_trace.errors import EkidenError
from ekiden_trace.plan.planner import UpdatePlan, plan_update
from ekiden_trace.plan.transformers import Transformers
from ekiden_trace.state.restore import Restorer, RestoreResult
from ekiden_trace.state.snapshot import Snapshot
from ekiden_trace.target.inject import Injector


@dataclass
class GuardState:
    """What a rollback needs, handed over right after the capture."""

    pid: int
    old_path: str
    snapshot: Snapshot
    point: str
    signo: int
    argv: list[bytes]
    envp: list[bytes]
    cleared: list[int]
    timeout: float
    # The program's signals that arrived after the exec, held for the version that runs
    # afterwards: delivered once it stands at its update point, its handlers installed.
    held: list[int] = field(default_factory=list)


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
        injector.exec_in_place(str(old.path), state.argv, state.envp)
        restorer = Restorer(
            tracee, identity, state.snapshot, Transformers(), state.point, state.signo, state.held
        )
        result = restorer.run(state.timeout)
        restorer.injector.restore_cloexec(state.cleared)
    except EkidenError as failure:
        raise EkidenError(
            f"the update failed and so did the rollback ({failure}); process {tracee.pid} "
            "is in an unknown state: restart the service."
        ) from None
    return result
