"""Heap objects decoded from columns only when asked, with the reference's Decoder.

`HeapObjects` is `Snapshot.objects` for a compiled capture: a mapping from object id
(column index + 1) to HeapObject that decodes an object the first time it is read
and keeps it.  Decoding needs no process: `CapturedSource` answers what the Decoder
asks about addresses from what the capture learnt (columns.py: facts, heap ranges,
globals), and pointers into the heap resolve to the object holding them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from typing import Any

from ekiden_trace.binary.dwarf.model import Variable
from ekiden_trace.binary.program import Program
from ekiden_trace.errors import EkidenError
from ekiden_trace.state.columns import BUFFER, CHAR_TYPE, STRING, HeapColumns
from ekiden_trace.state.decode import Decoder, HeapPointer
from ekiden_trace.state.snapshot import ArrayValue, HeapObject, ObjectRef, Unfollowed, Value


class CapturedSource:
    """The Decoder's AddressSource offline: the facts a capture collected about addresses."""

    def __init__(self, program: Program, columns: HeapColumns) -> None:
        self.program = program
        self._facts = columns.facts
        self._heap = sorted(columns.heap)
        self._heap_starts = [start for start, _ in self._heap]

    def region(self, addr: int) -> str:
        i = bisect.bisect_right(self._heap_starts, addr) - 1
        if i >= 0 and addr < self._heap[i][1]:
            return "heap"
        fact = self._facts.get(addr)
        return fact.region if fact is not None else "unknown"

    def symbol_at(self, addr: int) -> tuple[str, int] | None:
        fact = self._facts.get(addr)
        return fact.symbol if fact is not None else None

    def literal(self, addr: int) -> bytes:
        fact = self._facts.get(addr)
        if fact is None or fact.literal is None:
            raise EkidenError(f"the capture did not read the string at {addr:#x}")
        return fact.literal

    def static_address(self, var: Variable) -> int | None:
        return None  # the globals that lengths read were captured (columns.globals)


def _reread(path: str, name: str, build_id: str) -> Program:
    """v1 read again in another process (the guardian's: the tool's held image is its
    inherited fd), by its held path or else by its name, and only that very build."""
    for where in (path, name.removesuffix(" (deleted)")):
        try:
            program = Program(where, name)
        except (EkidenError, OSError):
            continue
        if program.build_id == build_id:
            return program
    raise EkidenError(f"{name} (build {build_id}) can no longer be read to decode its state")


def _no_memory(addr: int, size: int) -> bytes:
    raise EkidenError(f"the capture did not read the {size} bytes at {addr:#x}")


class HeapObjects(Mapping[int, HeapObject]):
    """The heap objects of a compiled capture, decoded on first access (see module doc).

    Pickles as its columns and the program's path: the decoded cache stays behind."""

    def __init__(self, columns: HeapColumns, program: Program | tuple[str, str, str]) -> None:
        """`program`: v1, or where to read it again: (path, name, build id)."""
        self.columns = columns
        self._program = program
        self._decoder: Decoder | None = None
        self._cache: dict[int, HeapObject] = {}
        self._refs: dict[int, ObjectRef] = {}  # the object being decoded: value -> target
        self._order: list[int] | None = None  # object indexes by address, built on demand
        self._starts: list[int] = []

    def __reduce__(self) -> tuple[Any, ...]:
        program = self._program
        if isinstance(program, Program):
            program = (str(program.path), program.name, program.build_id)
        return HeapObjects, (self.columns, program)

    def __len__(self) -> int:
        return len(self.columns)

    def __iter__(self) -> Iterator[int]:
        return iter(range(1, len(self.columns) + 1))

    def __contains__(self, oid: object) -> bool:
        return isinstance(oid, int) and 1 <= oid <= len(self.columns)

    def __getitem__(self, oid: int) -> HeapObject:
        obj = self._cache.get(oid)
        if obj is None:
            if oid not in self:
                raise KeyError(oid)
            obj = self._cache[oid] = self._decode(oid - 1)
        return obj

    @property
    def decoder(self) -> Decoder:
        """The Decoder of these columns: decodes any captured bytes of v1's types."""
        if self._decoder is None:
            if not isinstance(self._program, Program):
                self._program = _reread(*self._program)
            self._decoder = Decoder(
                CapturedSource(self._program, self.columns), _no_memory, self._to_heap
            )
            self._decoder.globals.update(self.columns.globals)
        return self._decoder

    def value(self, type_id: int, data: bytes, offset: int = 0) -> Value:
        """The value of v1's type `type_id` at `offset` in `data`, pointers into the
        heap resolved to the captured objects holding them."""
        return self.decoder.decode(type_id, data, offset)

    def _decode(self, index: int) -> HeapObject:
        columns = self.columns
        decoder = self.decoder
        type_id, count, kind = columns.type_id[index], columns.count[index], columns.kind[index]
        name = "char" if type_id == CHAR_TYPE else decoder.type_name(type_id)
        obj = HeapObject(index + 1, columns.addr[index], name, count, type_id)
        raw = columns.bytes_of(index)
        if kind in (STRING, BUFFER):
            obj.string, obj.is_buffer = raw, kind == BUFFER
            return obj
        first = bisect.bisect_left(columns.slot_obj, index)
        last = bisect.bisect_right(columns.slot_obj, index, lo=first)
        self._refs = {
            columns.addr[target] + off: ObjectRef(target + 1, off)
            for target, off in zip(
                columns.target_obj[first:last], columns.target_off[first:last], strict=True
            )
        }
        try:
            if count == 1:
                obj.value = decoder.decode(type_id, raw, 0)
            else:
                esize = len(raw) // count if count else 0
                items = [decoder.decode(type_id, raw, i * esize) for i in range(count)]
                obj.value = ArrayValue(items)
        finally:
            self._refs = {}
        return obj

    def _to_heap(self, item: HeapPointer) -> None:
        """The offline decoder met a pointer into the heap: point it at its object."""
        info = self.decoder.types.get(item.pointee)
        if info is None or info.kind == "void":
            item.pointer.target = Unfollowed("untyped")
            return
        addr = item.pointer.addr
        item.pointer.target = self._refs.get(addr) or self._holding(addr)

    def _holding(self, addr: int) -> ObjectRef | Unfollowed:
        """The captured object holding `addr`, by a search over the objects' starts."""
        columns = self.columns
        if self._order is None:
            self._order = sorted(range(len(columns)), key=columns.addr.__getitem__)
            self._starts = [columns.addr[i] for i in self._order]
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            index = self._order[i]
            extent = columns.start[index + 1] - columns.start[index]
            extent += columns.kind[index] == STRING  # its NUL
            if addr - columns.addr[index] < max(extent, 1):
                return ObjectRef(index + 1, addr - columns.addr[index])
        return Unfollowed("not captured")
