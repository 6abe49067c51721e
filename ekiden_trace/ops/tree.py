"""`attach --tree`: update a process and its descendants that run the same binary."""

from __future__ import annotations

from dataclasses import dataclass

from ekiden_trace.binary.files import same_file
from ekiden_trace.errors import EkidenError
from ekiden_trace.ops.interrupts import Interrupted
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


def update_tree(pid: int, options: UpdateOptions) -> list[TreeOutcome]:
    """Update a process and every descendant running the same binary, each at its own
    update point; sessions first, the parent last.  The ones updated stay updated; a
    failed one keeps running its old version."""
    prepared = prepare(pid, options)
    outcomes = []
    for member in tree_of(pid):
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
