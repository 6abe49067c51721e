"""The checks a captured snapshot must pass before the exec: every tagged variable read,
every pointer explained, every pointer inside an object at a place the new layout has."""

from __future__ import annotations

from ekiden_trace.plan.planner import UpdatePlan
from ekiden_trace.state.columns import AddressFact
from ekiden_trace.state.interior import moved_offset
from ekiden_trace.state.snapshot import (
    ArrayValue,
    FunctionRef,
    GlobalRef,
    HeapObject,
    ObjectRef,
    Pointer,
    Snapshot,
    StructValue,
    Unfollowed,
    UnionValue,
    Value,
)


def _is_suspect(pointer: Pointer, symbols: dict) -> bool:
    """A pointer check_snapshot may report: unexplained, or to a symbol v2 lacks."""
    target = pointer.target
    if isinstance(target, Unfollowed):
        return target.reason != "opaque" and pointer.addr != 0
    if isinstance(target, FunctionRef | GlobalRef):
        symbol = target.symbol or "?"
        return "@" not in symbol and symbol not in symbols
    return False


def _suspect_fact(fact: AddressFact, symbols: dict) -> bool:
    """Whether a pointer in a compiled capture's heap, to an address outside it, may be
    reported: anything not plainly the start of a function or global v2 has.  (A string
    literal has no symbol: the full check then tells it from a function pointer.)"""
    if fact.symbol is None:
        return True
    name, offset = fact.symbol
    return bool(offset) or ("@" not in name and name not in symbols)


def _may_have_problems(snapshot: Snapshot, symbols: dict) -> bool:
    """A quick scan of every captured value, without the paths that messages need; on a
    compiled capture's columns, without decoding its heap objects."""
    stack: list[Value | None] = [v.value for v in snapshot.variables]
    heap = snapshot.heap
    if heap is not None:
        if heap.target_off.tobytes().strip(b"\0"):
            return True  # interior pointers, checked in full by _interior_problem
        if any(_suspect_fact(fact, symbols) for fact in heap.facts.values()):
            return True
    else:
        stack += [obj.value for obj in snapshot.objects.values() if obj.string is None]
    while stack:
        item = stack.pop()
        if isinstance(item, Pointer):
            if _is_suspect(item, symbols):
                return True
            if isinstance(item.target, ObjectRef) and item.target.offset:
                return True  # checked in full by _interior_problem
        elif isinstance(item, StructValue):
            stack += item.fields.values()
        elif isinstance(item, UnionValue):
            if item.unexplained:
                return True
            stack += item.members.values()
        elif isinstance(item, ArrayValue):
            stack += item.items
    return False


def _interior_problem(plan: UpdatePlan, obj: HeapObject, offset: int, in_new: bool) -> str | None:
    """Why a pointer `offset` bytes into `obj` cannot be carried over (interior.py): into
    v1 again (a rollback), and into v2's type of the same name when `in_new`."""
    if not offset or obj.string is not None:
        return None
    old_types = plan.old.index.types
    moved = moved_offset(old_types, obj.type_id, old_types, obj.type_id, offset)
    named = plan.new.index.type_by_name(obj.type_name) if in_new else None
    if not isinstance(moved, str) and named is not None:
        moved = moved_offset(old_types, obj.type_id, plan.new.index.types, named, offset)
    return moved if isinstance(moved, str) else None


def check_snapshot(plan: UpdatePlan, snapshot: Snapshot) -> list[str]:
    """What of the captured state cannot be carried over: tagged variables that exist but
    could not be read, and pointers, with their paths.

    Every variable is checked, not only those v2 takes automatically: a rollback
    restores the whole snapshot into v1 again.  Symbols are checked against v2
    for the variables converted automatically.  Runs during the pause but before
    the exec, so a refusal leaves v1 untouched.
    """
    lost = [f"`{v.key}` cannot be read: {v.absent}" for v in snapshot.variables if v.lost]
    return (lost + _pointer_problems(plan, snapshot))[:20]


def _pointer_problems(plan: UpdatePlan, snapshot: Snapshot) -> list[str]:
    """Pointers of the captured state that cannot be carried over, with their paths."""
    new_symbols = plan.new.symbols.by_name
    if not _may_have_problems(snapshot, new_symbols):
        return []
    transferred = {
        v.old.key for v in plan.variables if v.old is not None and v.action == "transfer"
    }
    problems: list[str] = []
    seen: set[int] = set()

    def visit(value: Value | None, path: str, check_symbols: bool) -> None:
        stack = [(value, path)]
        while stack:
            item, where = stack.pop()
            if isinstance(item, Pointer):
                target = item.target
                if isinstance(target, Unfollowed) and _is_suspect(item, new_symbols):
                    problems.append(
                        f"{where} points to {item.addr:#x} ({target.reason}); add a hint "
                        "(EKIDEN_HINT_*) or a transformer"
                    )
                elif check_symbols and _is_suspect(item, new_symbols):
                    problems.append(
                        f"{where} points to {target.symbol or '?'}, which v2 does not have"
                    )
                elif isinstance(target, ObjectRef):
                    obj = snapshot.objects[target.object_id]
                    problem = _interior_problem(plan, obj, target.offset, check_symbols)
                    if problem:
                        problems.append(f"{where} {problem}")
                    if obj.id not in seen:
                        seen.add(obj.id)
                        stack.append((obj.value, f"{where}->#{obj.id}"))
            elif isinstance(item, StructValue):
                stack += [(v, f"{where}.{k}") for k, v in item.fields.items()]
            elif isinstance(item, UnionValue) and item.unexplained:
                problems.append(
                    f"{where} is a {item.type_name} holding a pointer, and nothing says which "
                    "member is live; add EKIDEN_HINT_UNION_MEMBER or EKIDEN_HINT_UNION_CASE"
                )
            elif isinstance(item, UnionValue) and item.active:
                stack += [(v, f"{where}.{k}") for k, v in item.members.items()]
            elif isinstance(item, ArrayValue):
                stack += [(v, f"{where}[{i}]") for i, v in enumerate(item.items)]

    for var in sorted(snapshot.variables, key=lambda v: v.key not in transferred):
        visit(var.value, var.name, var.key in transferred)
    return problems
