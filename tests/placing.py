"""Put one snapshot's heap into a running new version by the Python encoder or by the
compiled restore (state/core/place.py), and read back what each wrote; for the tests
that compare the two and for bench/restore.py.

Until the compiled capture fills `Snapshot.heap`, `columns_of` builds the columns
from a reference snapshot of a process that still holds the objects (an idle server).
"""

from __future__ import annotations

import dataclasses
import os
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ekiden_trace.binary.dwarf.types import get
from ekiden_trace.binary.program import Program
from ekiden_trace.ops.inspect import InspectOptions, inspect
from ekiden_trace.plan.planner import UpdatePlan, plan_update
from ekiden_trace.plan.transformers import Transformers, load_transformers
from ekiden_trace.state.backend import ProcessBackend, program_bias
from ekiden_trace.state.columns import BUFFER, STRING, TYPED, AddressFact, HeapColumns
from ekiden_trace.state.control import mark_injector
from ekiden_trace.state.encode import Encoder
from ekiden_trace.state.snapshot import (
    ArrayValue,
    FunctionRef,
    GlobalRef,
    LiteralRef,
    Pointer,
    Snapshot,
    StructValue,
    Unfollowed,
    UnionValue,
)
from ekiden_trace.target.tracee import Tracee


def reference_snapshot(pid: int) -> Snapshot:
    """The reference capture of an idle process (it runs on afterwards)."""
    return inspect(pid, InspectOptions(now=True))


def _fact(target: Any) -> AddressFact | None:
    if isinstance(target, FunctionRef):
        return AddressFact("code", (target.symbol, 0) if target.symbol else None)
    if isinstance(target, GlobalRef):
        return AddressFact("data", (target.symbol, target.offset))
    if isinstance(target, LiteralRef):
        return AddressFact("code", None, target.text)
    if isinstance(target, Unfollowed):
        return AddressFact(
            "data" if target.reason == "data without a symbol" else target.reason, None
        )
    return None


def _collect_facts(value: Any, facts: dict[int, AddressFact]) -> None:
    if isinstance(value, Pointer):
        fact = _fact(value.target)
        if value.addr and fact is not None:
            facts[value.addr] = fact
    elif isinstance(value, StructValue):
        for inner in value.fields.values():
            _collect_facts(inner, facts)
    elif isinstance(value, ArrayValue):
        for inner in value.items:
            _collect_facts(inner, facts)
    elif isinstance(value, UnionValue):
        for inner in value.members.values():
            _collect_facts(inner, facts)


def columns_of(snapshot: Snapshot, program: Program) -> HeapColumns:
    """The heap of `snapshot` as columns, its bytes read from the process it was taken of
    (which must not have changed them since).  Object ids missing from the snapshot (taken
    into an enclosing one) become empty strings at address 0, which nothing points to."""
    heap = HeapColumns()
    chunks: list[bytes] = []
    fd = os.open(f"/proc/{snapshot.pid}/mem", os.O_RDONLY)
    try:
        for object_id in range(1, max(snapshot.objects, default=0) + 1):
            obj = snapshot.objects.get(object_id)
            if obj is None:
                data, kind, addr, type_id, count = b"", STRING, 0, 0, 1
            elif obj.string is not None:
                data, kind = obj.string, BUFFER if obj.is_buffer else STRING
                addr, type_id, count = obj.addr, obj.type_id, obj.count
            else:
                size = (get(program.index.types, obj.type_id).size or 0) * obj.count
                data, kind = os.pread(fd, size, obj.addr), TYPED
                addr, type_id, count = obj.addr, obj.type_id, obj.count
                _collect_facts(obj.value, heap.facts)
            heap.addr.append(addr)
            heap.type_id.append(type_id)
            heap.count.append(count)
            heap.kind.append(kind)
            heap.start.append(heap.start[-1] + len(data))
            chunks.append(data)
    finally:
        os.close(fd)
    heap.data = b"".join(chunks)
    return heap


def plan_for(v1: Path, v2: Path, xform: Path | None) -> tuple[UpdatePlan, Transformers]:
    """The update plan of a pair, with its transformer file."""
    transformers = load_transformers(str(xform) if xform else None)
    return plan_update(Program(v1), Program(v2), transformers), transformers


def roots_of(plan: UpdatePlan, snapshot: Snapshot) -> list[tuple[Any, int]]:
    """The carried variables' old values with their new types, as the Restorer's first
    batch takes them (restore.py `_write_carried_heap`)."""
    old_values = {v.key: v for v in snapshot.variables}
    roots = []
    for variable in plan.variables:
        if variable.action != "transfer" or variable.old is None or variable.new is None:
            continue
        old = old_values.get(variable.old.key)
        if old is not None and old.value is not None:
            roots.append((old.value, variable.new.variable.type))
    return roots


@dataclass
class Placed:
    """What one encoder wrote: per captured object id, its new address and bytes."""

    objects: dict[int, tuple[int, bytes]]
    objects_written: int
    bytes_written: int
    compiled: bool
    seconds: float
    timings: dict[str, float]


@contextmanager
def stopped_backend(pid: int, program: Program) -> Iterator[ProcessBackend]:
    """The new version's process, stopped, as the encoder's backend."""
    tracee = Tracee.seize(pid)
    try:
        bias = program_bias(pid, program)
        backend = ProcessBackend(mark_injector(tracee, program, bias), program, bias)
        try:
            yield backend
        finally:
            backend.close()
    finally:
        tracee.detach()


def place(
    backend: ProcessBackend,
    plan: UpdatePlan,
    snapshot: Snapshot,
    transformers: Transformers,
    heap: HeapColumns | None,
) -> Placed:
    """Materialise the carried heap into the backend's process (by the compiled path
    when `heap` is given and it can) and read back every object written."""
    snapshot = dataclasses.replace(snapshot, heap=heap)
    encoder = Encoder(plan.old, plan.new, snapshot, transformers, backend)
    clock = time.perf_counter()
    encoder.materialise(roots_of(plan, snapshot))
    seconds = time.perf_counter() - clock
    spans = []
    for object_id, obj in snapshot.objects.items():
        if object_id in encoder.addresses:
            spans.append((object_id, encoder.addresses[object_id], encoder._unit_size(obj)))
    data = backend.tracee.read_many([(addr, size) for _, addr, size in spans])
    return Placed(
        {oid: (addr, chunk) for (oid, addr, _), chunk in zip(spans, data, strict=True)},
        encoder.objects_written,
        encoder.bytes_written,
        encoder._placer is not None and not encoder._declined,
        seconds,
        encoder.place_timings,
    )


def differences(reference: Placed, compiled: Placed, read: Any) -> list[str]:
    """Where two placements of one heap differ, object by object: the same objects, the
    same bytes, where words may differ only as pointers to the same place of the same
    object (or to equal new C strings)."""
    if set(reference.objects) != set(compiled.objects):
        missing = set(reference.objects) ^ set(compiled.objects)
        return [f"objects placed by one path only: {sorted(missing)[:10]}"]
    found = []
    ref_index = _index(reference)
    new_index = _index(compiled)
    for object_id, (_, want) in reference.objects.items():
        got = compiled.objects[object_id][1]
        if len(want) != len(got):
            found.append(f"#{object_id}: {len(want)} bytes against {len(got)}")
            continue
        if want == got:
            continue
        for at in range(0, len(want) - 7, 8):
            a, b = want[at : at + 8], got[at : at + 8]
            if a != b and not _same_place(a, b, ref_index, new_index, read):
                found.append(f"#{object_id} at {at}: {a.hex()} against {b.hex()}")
        if len(want) % 8 and want[-(len(want) % 8) :] != got[-(len(got) % 8) :]:
            found.append(f"#{object_id}: its last bytes differ")
    return found


def _index(placed: Placed) -> tuple[array, list[int], list[int]]:
    rows = sorted((addr, len(data), oid) for oid, (addr, data) in placed.objects.items())
    return array("Q", [r[0] for r in rows]), [r[1] for r in rows], [r[2] for r in rows]


def _where(value: int, index: tuple[array, list[int], list[int]]) -> tuple[int, int] | None:
    import bisect

    starts, sizes, ids = index
    at = bisect.bisect_right(starts, value) - 1
    if at >= 0 and value - starts[at] < sizes[at]:
        return ids[at], value - starts[at]
    return None


def _same_place(a: bytes, b: bytes, ref: Any, new: Any, read: Any) -> bool:
    x, y = int.from_bytes(a, "little"), int.from_bytes(b, "little")
    px, py = _where(x, ref), _where(y, new)
    if px is not None or py is not None:
        return px == py
    try:  # two new strings made from one string literal
        return read(x, 256).split(b"\0")[0] == read(y, 256).split(b"\0")[0]
    except OSError:
        return False
