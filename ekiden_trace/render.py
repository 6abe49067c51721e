"""Text and JSON views of a snapshot (inspect) and of a program's marks (points).

The JSON layout is documented in README.md ("JSON output") and is stable:
fields are only ever added.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from ekiden_trace.binary.program import Program
from ekiden_trace.plan.planner import describe_drop
from ekiden_trace.state.snapshot import (
    ArrayValue,
    CharArray,
    EnumValue,
    FunctionRef,
    GlobalRef,
    HeapObject,
    LiteralRef,
    ObjectRef,
    Pointer,
    Snapshot,
    StructValue,
    Unfollowed,
    UnionValue,
    Value,
)

if TYPE_CHECKING:
    from ekiden_trace.ops.tree import TreeOutcome
    from ekiden_trace.ops.update import UpdateReport
    from ekiden_trace.plan.planner import UpdatePlan

INSPECT_FORMAT = "ekiden-trace/inspect/1"
POINTS_FORMAT = "ekiden-trace/points/1"
DIFF_FORMAT = "ekiden-trace/diff/1"
REPORT_FORMAT = "ekiden-trace/update/1"
TREE_FORMAT = "ekiden-trace/update-tree/1"
LINE_WIDTH = 100
SPARSE_ARRAY = 8


def text_of(raw: bytes) -> str:
    """Bytes as text: UTF-8 where valid, backslash escapes elsewhere."""
    return raw.decode("utf-8", "backslashreplace")


# -- JSON --------------------------------------------------------------------


def value_json(value: Value | None) -> Any:
    """The JSON form of one value (see README.md, 'JSON output')."""
    if value is None or isinstance(value, int | float):
        return value
    if isinstance(value, EnumValue):
        return {"enum": value.name, "value": value.value}
    if isinstance(value, StructValue):
        return {
            "struct": value.type_name,
            "fields": {k: value_json(v) for k, v in value.fields.items()},
        }
    if isinstance(value, UnionValue):
        return {
            "union": value.type_name,
            "active": value.active,
            "members": {k: value_json(v) for k, v in value.members.items()},
            "bytes": value.raw.hex(),
        }
    if isinstance(value, ArrayValue):
        return [value_json(v) for v in value.items]
    if isinstance(value, CharArray):
        return {"chars": text_of(value.text), "bytes": value.raw.hex()}
    return _pointer_json(value)


def _pointer_json(pointer: Pointer) -> Any:
    target = pointer.target
    if pointer.addr == 0:
        return None
    if isinstance(target, ObjectRef):
        return {"ref": target.object_id, **({"offset": target.offset} if target.offset else {})}
    if isinstance(target, FunctionRef):
        return {"function": target.symbol, "address": hex(pointer.addr)}
    if isinstance(target, GlobalRef):
        return {"global": target.symbol, "offset": target.offset}
    if isinstance(target, LiteralRef):
        return {"literal": text_of(target.text)}
    reason = target.reason if isinstance(target, Unfollowed) else "not followed"
    return {"address": hex(pointer.addr), "unfollowed": reason}


def _object_json(obj: HeapObject) -> dict[str, Any]:
    out: dict[str, Any] = {"address": hex(obj.addr), "type": obj.type_name, "count": obj.count}
    if obj.text is not None:
        out["string"] = text_of(obj.text)
        if obj.is_buffer and obj.string is not None:
            out["capacity"] = len(obj.string)
    elif obj.is_buffer:
        out["bytes"] = obj.string.hex() if obj.string is not None else ""
    else:
        out["value"] = value_json(obj.value)
    return out


def snapshot_json(snapshot: Snapshot) -> dict[str, Any]:
    """The whole snapshot as a JSON-ready dict."""
    stop = snapshot.stop
    return {
        "format": INSPECT_FORMAT,
        "pid": snapshot.pid,
        "binary": snapshot.binary,
        "build_id": snapshot.build_id,
        "stop": {
            "point": stop.point,
            "pc": hex(stop.pc),
            "function": stop.function,
            "file": stop.file,
            "line": stop.line,
            "frames": stop.frames,
            "code": stop.code,
        },
        "variables": [
            {
                "name": v.name,
                "key": v.key,
                "scope": v.scope,
                "function": v.function,
                "file": v.file,
                "type": v.c_type,
                "address": hex(v.address) if v.address is not None else None,
                "value": value_json(v.value),
                **({"absent": v.absent} if v.absent else {}),
            }
            for v in snapshot.variables
        ],
        "objects": {str(oid): _object_json(obj) for oid, obj in snapshot.objects.items()},
        "bytes_read": snapshot.bytes_read,
    }


# -- text --------------------------------------------------------------------


class _TextRenderer:
    def __init__(self, snapshot: Snapshot) -> None:
        self.objects = snapshot.objects

    def value(self, value: Value | None, indent: int) -> str:
        if value is None:
            return "<unreadable>"
        if isinstance(value, bool | int):
            return str(value)
        if isinstance(value, float):
            return repr(value)
        if isinstance(value, EnumValue):
            return value.name or f"{value.value} /* no enumerator */"
        if isinstance(value, CharArray):
            return json.dumps(text_of(value.text), ensure_ascii=False)
        if isinstance(value, Pointer):
            return self.pointer(value)
        if isinstance(value, StructValue):
            return self.braces(
                [f"{k} = {self.value(v, indent + 4)}" for k, v in value.fields.items()], indent
            )
        if isinstance(value, UnionValue):
            parts = [f"{k} = {self.value(v, indent + 4)}" for k, v in value.members.items()]
            if value.active is None:
                parts.append(f"/* bytes {value.raw.hex()} */")
            return self.braces(parts, indent)
        return self.array(value, indent)

    def array(self, value: ArrayValue, indent: int) -> str:
        items = value.items
        empty = [_is_empty(v) for v in items]
        if len(items) > SPARSE_ARRAY and any(empty):
            parts = [
                f"[{i}] = {self.value(v, indent + 4)}" for i, v in enumerate(items) if not empty[i]
            ]
            parts.append(f"/* {sum(empty)} of {len(items)} empty */")
        else:
            parts = [self.value(v, indent + 4) for v in items]
        return self.braces(parts, indent)

    def pointer(self, pointer: Pointer) -> str:
        target = pointer.target
        if pointer.addr == 0:
            return "NULL"
        if isinstance(target, ObjectRef):
            obj = self.objects[target.object_id]
            if obj.shown is not None and obj.string is not None and obj.text is not None:
                text = json.dumps(text_of(obj.text), ensure_ascii=False)
                return f"{text} /* in {len(obj.string)} bytes */"
            if obj.is_buffer and obj.string is not None:
                return f"<{len(obj.string)} bytes: {obj.string.hex()}>"
            if obj.string is not None and not target.offset:
                return json.dumps(text_of(obj.string), ensure_ascii=False)
            return f"#{target.object_id}" + (f"+{target.offset}" if target.offset else "")
        if isinstance(target, FunctionRef):
            return f"&{target.symbol}" if target.symbol else f"(function) {pointer.addr:#x}"
        if isinstance(target, GlobalRef):
            return f"&{target.symbol}" + (f"+{target.offset}" if target.offset else "")
        if isinstance(target, LiteralRef):
            return json.dumps(text_of(target.text), ensure_ascii=False)
        reason = target.reason if isinstance(target, Unfollowed) else "not followed"
        return f"{pointer.addr:#x} /* {reason} */"

    @staticmethod
    def braces(parts: list[str], indent: int) -> str:
        one_line = "{ " + ", ".join(parts) + " }" if parts else "{}"
        if len(one_line) + indent <= LINE_WIDTH and "\n" not in one_line:
            return one_line
        pad = " " * (indent + 4)
        return "{\n" + "".join(f"{pad}{p},\n" for p in parts) + " " * indent + "}"


def _is_empty(value: Value | None) -> bool:
    """Zero, NULL, all-zero chars, or a struct or array of nothing but those."""
    if isinstance(value, Pointer):
        return value.addr == 0
    if isinstance(value, CharArray):
        return not value.raw.strip(b"\0")
    if isinstance(value, StructValue):
        return all(_is_empty(v) for v in value.fields.values())
    if isinstance(value, ArrayValue):
        return all(_is_empty(v) for v in value.items)
    return value == 0


def snapshot_text(snapshot: Snapshot) -> str:
    """A readable, C-like view: variables first, then each heap object once by id."""
    render = _TextRenderer(snapshot)
    stop = snapshot.stop
    where = stop.function or "??"
    if stop.file:
        where += f" ({stop.file}:{stop.line})"
    if stop.point:
        at = f"update point {stop.point} in {where}"
    elif stop.frames and stop.frames[0] != stop.function:
        at = f"{stop.frames[0]}, called from {where}"
    else:
        at = where
    lines = [f"process {snapshot.pid}: {snapshot.binary}", f"stopped at {at}"]
    if stop.frames:
        lines.append("frames: " + " <- ".join(stop.frames))
    lines += stop.code
    lines.append("")
    for var in snapshot.variables:
        head = f"{var.declaration}  /* {var.scope_text} */"
        if var.absent:
            lines.append(f"{head} = <{var.absent}>")
        else:
            lines.append(f"{head} = {render.value(var.value, 0)}")
    structured = [o for o in snapshot.objects.values() if o.string is None]
    if structured:
        lines += ["", f"heap objects ({len(snapshot.objects)}, strings shown inline):"]
        for obj in structured:
            shape = f"{obj.type_name}[{obj.count}]" if obj.is_array else obj.type_name
            lines.append(f"#{obj.id} {shape} @ {obj.addr:#x} = {render.value(obj.value, 0)}")
    return "\n".join(lines) + "\n"


# -- points --------------------------------------------------------------------


def points_json(program: Program) -> dict[str, Any]:
    """Marks of a binary as a JSON-ready dict."""
    return {
        "format": POINTS_FORMAT,
        "binary": program.name,
        "build_id": program.build_id,
        "points": [
            {
                "name": p.name,
                "function": p.function,
                "file": p.file,
                "line": p.line,
                "address": hex(p.pc),
            }
            for p in program.points
        ],
        "tags": [
            {
                "name": t.name,
                "key": t.key,
                "scope": t.scope,
                "function": t.variable.function,
                "file": t.variable.cu,
                "type": t.c_type,
                "size": t.size,
            }
            for t in program.tags
        ],
        "hints": program.hints.describe(),
    }


def points_text(program: Program) -> str:
    """Marks of a binary as aligned text tables."""
    data = points_json(program)
    lines = [f"{program.name} (build-id {program.build_id})", "", "update points:"]
    lines += [
        f"  {p['name']:<16} {p['function'] or '??':<20} {p['file']}:{p['line']}"
        for p in data["points"]
    ]
    lines += ["", "tagged variables:"]
    for tag in program.tags:
        lines.append(
            f"  {tag.name:<16} {tag.describe_scope():<32} {tag.c_type:<28} "
            f"{tag.size if tag.size is not None else '?'} bytes"
        )
    lines += ["", "hints:"]
    lines += [f"  {h['subject']:<32} {h['hint']}" for h in data["hints"]] or ["  (none)"]
    return "\n".join(lines) + "\n"


# -- diff and update reports ---------------------------------------------------


def plan_json(plan: UpdatePlan) -> dict[str, Any]:
    """An update plan as a JSON-ready dict."""
    return {
        "format": DIFF_FORMAT,
        "old": plan.old.name,
        "new": plan.new.name,
        "ok": plan.ok,
        "variables": [
            {
                "key": v.key,
                "name": v.name,
                "action": v.action,
                "old_type": v.old.c_type if v.old else None,
                "new_type": v.new.c_type if v.new else None,
                "notes": v.notes,
                "problems": v.problems,
            }
            for v in plan.variables
        ],
        "types": plan.type_notes,
        "problems": plan.problems,
        "drops": [
            {
                "what": d.what,
                "type": d.type_name,
                "name": d.name,
                "c_type": d.c_type,
                "acknowledged": d.acknowledged,
                "acknowledged_by": d.acknowledged_by or None,
                "likely_renamed_to": d.renamed_to,
                "cut": d.cut or None,
            }
            for d in plan.drops
        ],
    }


def plan_text(plan: UpdatePlan) -> str:
    """An update plan for people: each variable, each changed type, and what blocks."""
    lines = [f"{plan.old.name} -> {plan.new.name}", "", "tagged variables:"]
    for v in plan.variables:
        types = f"{v.old.c_type if v.old else '-'} -> {v.new.c_type if v.new else '-'}"
        lines.append(f"  {v.key:<34} {v.action:<18} {types}")
        lines += [f"      ! {p}" for p in v.problems]
    if plan.type_notes:
        lines += ["", "types:"]
        for type_name, notes in plan.type_notes.items():
            lines += [f"  {type_name}: {note}" for note in notes]
    if plan.drops:
        lines += ["", "dropped (old state the update throws away):"]
        lines += [f"  {describe_drop(d)}" for d in plan.drops]
    if not plan.ok:
        lines += ["", "the update needs transformers for:", *[f"  {p}" for p in plan.problems]]
    elif plan.unacknowledged:
        lines += [
            "",
            "the update drops state no transformer file acknowledges: attach refuses it "
            "without drop(...) or rename(...) in a --xform file, or --allow-drop",
        ]
    else:
        lines += ["", "the update can be done"]
    return "\n".join(lines) + "\n"


def report_json(report: UpdateReport) -> dict[str, Any]:
    """An update report as a JSON-ready dict."""
    data = dataclasses.asdict(report)
    data["format"] = REPORT_FORMAT
    return data


def report_text(report: UpdateReport) -> str:
    """An update report for people; the versions are named by their binaries."""
    from ekiden_trace.ops.update import version_names

    old, new = version_names(report.old, report.new)
    updated = report.outcome == "updated"
    runs = new if updated else old
    written = (
        f"{len(report.moved)} variables ({', '.join(report.moved) or 'none'}), "
        f"{report.objects} heap objects, {report.bytes} bytes"
    )
    lines = [
        f"process {report.pid}: {report.outcome} {report.old} -> {report.new}"
        + (f" at update point {report.point}" if report.point else ""),
        "phases: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in report.phases.items()),
        f"pause: {report.pause * 1000:.2f} ms (stopped at the point until {runs} ran free"
        + ("" if updated else ", rolled back")
        + ")",
        f"moved into {new}: {written}" if updated else f"restored into {old}: {written}",
    ]
    if report.staged:
        size, seconds = report.staged
        lines.append(
            f"staged in its root (chrooted): {size / 1e6:.1f} MB in {seconds * 1000:.1f} ms, "
            "before the pause; removed when done"
        )
    if report.calls:
        lines.append(
            f"transformers called {new}'s own code {report.calls} times "
            "(what those calls built is not counted above)"
        )
    if report.initialised:
        lines.append(f"initialised by the new version: {', '.join(report.initialised)}")
    if report.dropped:
        lines.append(f"dropped: {', '.join(report.dropped)}")
    if report.inactive:
        lines.append(
            f"not active in {old} at the update point (nothing to carry): "
            + ", ".join(report.inactive)
        )
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def tree_json(outcomes: list[TreeOutcome]) -> dict[str, Any]:
    """The outcome of a --tree update, one entry per process."""
    return {
        "format": TREE_FORMAT,
        "processes": [
            {
                "pid": o.pid,
                "outcome": "left" if o.left else o.report.outcome if o.report else "failed",
                "error": str(o.error) if o.error else None,
                "report": report_json(o.report) if o.report else None,
            }
            for o in outcomes
        ],
    }


def _without_pid(message: str, pid: int) -> str:
    """An error about one process, for a line that already starts with its pid."""
    return message.removeprefix(f"process {pid} ")


def tree_text(outcomes: list[TreeOutcome]) -> str:
    """One line per process of a --tree update."""
    lines = []
    for o in outcomes:
        if o.left:
            reason = _without_pid(str(o.error), o.pid)
            lines.append(f"process {o.pid}: left on its old version until it ends: {reason}")
        elif o.error is None and o.report is not None:
            r = o.report
            lines.append(
                f"process {o.pid}: updated at {r.point}, pause {r.pause * 1000:.1f} ms, "
                f"{len(r.moved)} variables, {r.objects} objects, {r.bytes} bytes"
            )
        else:
            state = o.report.outcome if o.report else "not updated, still running its old version"
            lines.append(f"process {o.pid}: {state}: {_without_pid(str(o.error), o.pid)}")
    updated = sum(o.error is None for o in outcomes)
    left = sum(o.left for o in outcomes)
    lines.append(
        f"{updated} of {len(outcomes)} processes updated"
        + (f", {left} left on their old version" if left else "")
    )
    return "\n".join(lines) + "\n"
