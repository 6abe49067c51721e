"""`attach --tree`: update a process and its descendants that run the same binary."""

from __future__ import annotations

from dataclasses import dataclass

from ekiden_trace.binary.files import same_file
from ekiden_trace.binary.program import Program
from ekiden_trace.errors import EkidenError
from ekiden_trace.ops.interrupts import Interrupted
from ekiden_trace.ops.preflight import Unupdatable, check_reachable
from ekiden_trace.ops.update import RolledBack, UpdateOptions, UpdateReport, prepare, update
from ekiden_trace.target import procfs


def tree_of(pid: int) -> list[int]:
    """pid and its descendants that run the same executable file (the same image, even
    when its path now holds another file), deepest first."""
    children = procfs.children_by_parent()
    exe = procfs.exe_path(pid)
    order: list[int] = []

    def visit(current: int) -> None:
        for child in children.get(current, []):
            visit(child)
        if current == pid or same_file(procfs.exe_path(current), exe):
            order.append(current)

    visit(pid)
    return order


@dataclass
class TreeOutcome:
    """What happened to one process of a tree: its report, or the error that stopped it."""

    pid: int
    report: UpdateReport | None
    error: EkidenError | None
    left: bool = False  # could not be updated, and left on its old version as asked


def update_tree(
    pid: int, options: UpdateOptions, leave_unupdatable: bool = False
) -> list[TreeOutcome]:
    """Update a process and every descendant running the same binary, each at its own
    update point; sessions first, the parent last.  The ones updated stay updated; a
    failed one keeps running its old version.  A process that could not exec the new
    version (chrooted, ...) refuses the whole tree before anything is touched, or, with
    `leave_unupdatable`, is left on its old version until it ends."""
    prepared = prepare(pid, options)
    members = tree_of(pid)
    blocked = _unupdatable(members, prepared.new)
    if blocked and not leave_unupdatable:
        listed = "; ".join(str(error) for error in blocked.values())
        raise Unupdatable(
            f"{len(blocked)} of the {len(members)} processes cannot be updated: {listed} "
            "Nothing was touched; pass --leave-unupdatable to update the others and leave "
            "these on their old version until they end."
        )
    outcomes = []
    for member in members:
        if member in blocked:
            outcomes.append(TreeOutcome(member, None, blocked[member], left=True))
            continue
        try:
            outcomes.append(TreeOutcome(member, update(member, options, prepared), None))
        except RolledBack as failure:
            outcomes.append(TreeOutcome(member, failure.report, failure))
            if isinstance(failure.cause, Interrupted):
                break  # the user asked to stop: leave the rest of the tree alone
        except Interrupted:
            raise
        except EkidenError as failure:
            outcomes.append(TreeOutcome(member, None, failure))
    return outcomes


def _unupdatable(members: list[int], new: Program) -> dict[int, Unupdatable]:
    """The processes that could not exec `new` themselves, with the reason."""
    blocked = {}
    for member in members:
        try:
            check_reachable(member, new)
        except Unupdatable as error:
            blocked[member] = error
    return blocked
