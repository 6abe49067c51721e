"""`attach --tree`: update a process and its descendants that run the same binary."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ekiden_trace.errors import EkidenError
from ekiden_trace.ops.interrupts import Interrupted
from ekiden_trace.ops.update import RolledBack, UpdateOptions, UpdateReport, prepare, update


def tree_of(pid: int) -> list[int]:
    """pid and its descendants that run the same executable, deepest first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    exe = os.path.realpath(f"/proc/{pid}/exe")
    order: list[int] = []

    def visit(current: int) -> None:
        for child in children.get(current, []):
            visit(child)
        if current == pid or os.path.realpath(f"/proc/{current}/exe") == exe:
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
