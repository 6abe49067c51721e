"""Read the tagged state of a stopped process into a Snapshot.

Variables are found through DWARF (static addresses, or locations in the
frames of the stopped thread); the heap they reach is followed breadth-first
by pointer types and hints, each object read once and batched per level.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from ekiden_trace.binary.dwarf.expr import (
    ExprContext,
    MemoryLocation,
    RegisterLocation,
    Unsupported,
    ValueLocation,
    ValueUnknown,
    evaluate,
)
from ekiden_trace.binary.dwarf.index import DebugIndex
from ekiden_trace.binary.dwarf.types import TypeInfo, c_name, strip
from ekiden_trace.binary.hints import PointerHint, UnionCase
from ekiden_trace.binary.layouts import StructLayout, compile_layout, holds_pointer, member_key
from ekiden_trace.binary.program import TaggedVariable
from ekiden_trace.errors import EkidenError
from ekiden_trace.state.snapshot import (
    ArrayValue,
    CapturedVariable,
    CharArray,
    EnumValue,
    FunctionRef,
    GlobalRef,
    HeapObject,
    LiteralRef,
    ObjectRef,
    Pointer,
    Snapshot,
    StopLocation,
    StructValue,
    Unfollowed,
    UnionValue,
    Value,
)
from ekiden_trace.target.address_space import LiveProcess
from ekiden_trace.target.tracee import MemoryAccessError
from ekiden_trace.target.unwind import Frame

MAX_OBJECTS = 5_000_000
MAX_BYTES = 2 << 30
MAX_STRING = 1 << 20
PAGE = 1 << 12
LINE_SHIFT = 8  # heap objects are indexed by the 256-byte lines they span
STRING_PROBE = 256  # a string's first read: this many bytes, or up to its page's end
CHAR_ENCODINGS = ("signed_char", "unsigned_char")
CHAR_TYPE = -2  # the element type of a hinted buffer: plain bytes, whatever the pointer's type


class CaptureLimit(EkidenError):
    """The state graph is larger than the tool is willing to read."""


@dataclass(slots=True)
class _Follow:
    """A pointer waiting to be followed: what it points to and how."""

    pointer: Pointer
    pointee: int
    hint: PointerHint | None
    count: int | None


def frame_functions(index: DebugIndex, frame: Frame, bias: int) -> list[str]:
    """The functions a frame stands in, innermost first: those inlined at its pc, then the
    out-of-line function itself (empty when no function of the program covers the pc)."""
    lookup_pc = frame.lookup_pc - bias
    function = index.function_at(lookup_pc)
    if function is None:
        return []
    return [*index.inline_chain_at(lookup_pc), function.name]


def _location_for_pc(location: dict, pc: int) -> bytes | None:
    """The DWARF expression of a location that is valid at a link-time pc."""
    if location["kind"] == "expr":
        return bytes.fromhex(location["expr"])
    if location["kind"] == "list":
        for lo, hi, expr in location["ranges"]:
            if lo <= pc < hi:
                return bytes.fromhex(expr)
    return None


class Capturer:
    """One capture of one stopped process."""

    def __init__(self, live: LiveProcess) -> None:
        assert live.tracee is not None, "capture needs a stopped tracee"
        self.live = live
        self.tracee = live.tracee
        self.program = live.program
        self.index = live.program.index
        self.types: dict[int, TypeInfo] = self.index.types
        self.hints = live.program.hints
        self.objects: dict[int, HeapObject] = {}
        # Objects by start address, and by the lines they span, so that a pointer to
        # an object or into one is found in O(1).
        self._by_start: dict[int, int] = {}
        self._by_line: dict[int, list[int]] = {}
        self._extents: dict[int, int] = {}
        self._queue: deque[_Follow] = deque()
        self._strings: list[tuple[Pointer, int]] = []  # (pointer, char type) of this level
        self._stripped: dict[int, int] = {}
        self._names: dict[int, str] = {}
        self._layouts: dict[int, StructLayout] = {}
        self._enum_names: dict[int, dict[int, str]] = {}
        self._globals: dict[str, int | EnumValue] = {}
        self.bytes_read = 0

    # -- variables ---------------------------------------------------------

    def capture(self, stop: StopLocation, frames: list[Frame]) -> Snapshot:
        """Capture every tagged variable and the heap it reaches."""
        variables = [self._variable(tag, frames) for tag in self.program.tags]
        for var in variables:
            if isinstance(var.value, int | EnumValue):
                self._globals.setdefault(var.name, var.value)
        self._follow_all()
        return Snapshot(
            pid=self.tracee.pid,
            binary=str(self.program.path),
            build_id=self.program.build_id,
            stop=stop,
            variables=variables,
            objects=self.objects,
            bytes_read=self.bytes_read,
        )

    def _variable(self, tag: TaggedVariable, frames: list[Frame]) -> CapturedVariable:
        var = tag.variable
        captured = CapturedVariable(
            name=var.name,
            key=tag.key,
            scope=var.scope,
            scope_text=tag.describe_scope(),
            function=var.function,
            file=var.cu,
            c_type=tag.c_type,
            declaration=tag.declaration,
            address=None,
            value=None,
        )
        try:
            where = self._locate(tag, frames)
        except (Unsupported, ValueUnknown) as exc:
            captured.absent = f"its location cannot be evaluated here ({exc})"
            return captured
        if isinstance(where, str):
            captured.absent = where
            return captured
        kind, place = where
        size = tag.size or 0
        if kind == "memory":
            captured.address = place
            data = self._read(place, size)
        else:
            data = place
        hint = self.hints.variables.get(var.name)
        captured.value = self._decode(var.type, data, 0, hint=hint, siblings=None)
        return captured

    def _locate(self, tag: TaggedVariable, frames: list[Frame]) -> tuple[str, int | bytes] | str:
        """('memory', address) or ('value', bytes) for a variable, or why it has none."""
        var = tag.variable
        bias = self.live.bias
        if var.location["kind"] == "addr":
            return "memory", var.location["addr"] + bias
        for frame in frames:
            if var.function not in frame_functions(self.index, frame, bias):
                continue
            lookup_pc = frame.lookup_pc - bias
            function = self.index.function_at(lookup_pc)
            assert function is not None, "frame_functions found it"
            expr = _location_for_pc(var.location, lookup_pc)
            if expr is None:
                return f"it is optimised out at {function.name}'s current line"
            ctx = ExprContext(
                regs=frame.regs,
                read_word=self.tracee.read_word,
                cfa=frame.cfa,
                frame_base=self._frame_base(function.frame_base, frame),
                load_bias=bias,
            )
            loc = evaluate(expr, ctx)
            if isinstance(loc, MemoryLocation):
                return "memory", loc.addr
            if isinstance(loc, RegisterLocation):
                value = frame.regs.get(loc.regno)
                if value is None:
                    return "its register is not recoverable in this frame"
                return "value", value.to_bytes(8, "little")[: tag.size or 8]
            if isinstance(loc, ValueLocation):
                return "value", loc.as_bytes(tag.size or 8)
            return "its location is split into pieces, which is not supported"
        return f"{var.function} is not active in the stopped thread"

    def _frame_base(self, expr_hex: str | None, frame: Frame) -> int | None:
        if not expr_hex:
            return None
        ctx = ExprContext(
            regs=frame.regs,
            read_word=self.tracee.read_word,
            cfa=frame.cfa,
            frame_base=None,
            load_bias=self.live.bias,
        )
        loc = evaluate(bytes.fromhex(expr_hex), ctx)
        if isinstance(loc, MemoryLocation):
            return loc.addr
        if isinstance(loc, RegisterLocation):
            return frame.regs.get(loc.regno)
        return None

    # -- memory ------------------------------------------------------------

    def _account(self, size: int) -> None:
        self.bytes_read += size
        if self.bytes_read > MAX_BYTES:
            raise CaptureLimit(
                f"the tagged state exceeds {MAX_BYTES >> 20} MiB; add hints to stop following "
                "pointers that are not state (EKIDEN_HINT_OPAQUE)."
            )

    def _read(self, addr: int, size: int) -> bytes:
        self._account(size)
        return self.tracee.read(addr, size) if size else b""

    # -- decoding ----------------------------------------------------------

    def _type_name(self, tid: int) -> str:
        name = self._names.get(tid)
        if name is None:
            name = self._names[tid] = c_name(self.types, tid)
        return name

    def _strip(self, tid: int) -> int:
        sid = self._stripped.get(tid)
        if sid is None:
            sid = self._stripped[tid] = strip(self.types, tid)
        return sid

    def _layout(self, tid: int) -> StructLayout:
        layout = self._layouts.get(tid)
        if layout is None:
            layout = self._layouts[tid] = compile_layout(self.types, tid)
        return layout

    def _enum(self, tid: int, value: int) -> EnumValue:
        names = self._enum_names.get(tid)
        if names is None:
            names = {}
            for name, number in self.types[tid].enumerators.items():
                names.setdefault(number, name)
            self._enum_names[tid] = names
        return EnumValue(names.get(value), value, self._type_name(tid))

    def _decode(
        self,
        tid: int,
        data: bytes,
        offset: int,
        hint: PointerHint | None,
        siblings: dict[str, Value] | None,
    ) -> Value:
        sid = self._strip(tid)
        info = self.types[sid]
        size = info.size or 0
        raw = data[offset : offset + size]
        if info.kind == "base":
            return _decode_base(info, raw)
        if info.kind == "enum":
            return self._enum(sid, int.from_bytes(raw, "little", signed=info.encoding == "signed"))
        if info.kind == "pointer":
            return self._pointer(int.from_bytes(raw, "little"), info, hint, siblings)
        if info.kind == "struct":
            return self._decode_struct(info, data, offset)
        if info.kind == "union":
            return self._decode_union(info, data, offset, None)
        if info.kind == "array":
            return self._decode_array(info, data, offset)
        return CharArray(raw)

    def _decode_struct(self, info: TypeInfo, data: bytes, offset: int) -> StructValue:
        layout = self._layout(info.id)
        name = layout.name
        fields: dict[str, Value] = {}
        pointers: list[tuple[str, str | None, int, int]] = []  # key, name, type, address
        if layout.packed is not None:
            values = layout.packed.unpack_from(data, offset)
            for packed, value in zip(layout.packed_members, values, strict=True):
                if packed.role == "pointer":
                    pointers.append((packed.key, packed.name, packed.type_id, value))
                elif packed.role == "enum":
                    fields[packed.key] = self._enum(packed.type_id, value)
                else:
                    fields[packed.key] = value
        unions = []
        for key, member in layout.other:
            if member.bit_size:
                fields[key] = _decode_bits(self.types, member, data, offset)
                continue
            mtype = self.types[self._strip(member.type)]
            if mtype.kind == "union" and member.name and (name, member.name) in self.hints.unions:
                unions.append((key, member))
            elif mtype.kind == "pointer":
                raw = data[offset + member.offset : offset + member.offset + (mtype.size or 0)]
                pointers.append((key, member.name, mtype.id, int.from_bytes(raw, "little")))
            else:
                fields[key] = self._decode(member.type, data, offset + member.offset, None, None)
        # Pointers and hinted unions last: their hints may read sibling fields.
        for key, member_name, tid, addr in pointers:
            hint = self.hints.fields.get((name, member_name or ""))
            fields[key] = self._pointer(addr, self.types[tid], hint, fields)
        for key, member in unions:
            cases = self.hints.unions[(name, member.name)]
            utype = self.types[self._strip(member.type)]
            active = _active_member(cases, fields)
            fields[key] = self._decode_union(utype, data, offset + member.offset, active)
        return StructValue(name, {k: fields[k] for k in layout.keys})

    def _pointer(
        self,
        addr: int,
        info: TypeInfo,
        hint: PointerHint | None,
        siblings: dict[str, Value] | None,
    ) -> Pointer:
        """A pointer value, queued to be followed with the next level."""
        pointer = Pointer(addr)
        pointee = info.target if info.target is not None else -1
        count = None if hint is None else self._hinted_count(hint, siblings)
        self._queue.append(_Follow(pointer, pointee, hint, count))
        return pointer

    def _decode_union(
        self, info: TypeInfo, data: bytes, offset: int, active: str | None
    ) -> UnionValue:
        raw = data[offset : offset + (info.size or 0)]
        members: dict[str, Value] = {}
        for i, member in enumerate(info.members):
            key = member_key(member, i)
            if key == active or (active is None and not holds_pointer(self.types, member.type)):
                members[key] = self._decode(member.type, data, offset + member.offset, None, None)
        return UnionValue(self._type_name(info.id), raw, active, members)

    def _decode_array(self, info: TypeInfo, data: bytes, offset: int) -> Value:
        element = strip(self.types, info.target) if info.target is not None else -1
        einfo = self.types.get(element)
        count = info.count or 0
        if einfo is not None and einfo.kind == "base" and einfo.encoding in CHAR_ENCODINGS:
            return CharArray(data[offset : offset + count])
        esize = (einfo.size if einfo else 0) or 0
        return ArrayValue(
            [self._decode(element, data, offset + i * esize, None, None) for i in range(count)]
        )

    def _hinted_count(
        self, hint: PointerHint | None, siblings: dict[str, Value] | None
    ) -> int | None:
        if hint is None or hint.kind not in ("array", "buffer") or hint.length is None:
            return None
        length = hint.length.strip()
        if length.isdigit():
            return int(length)
        value = (siblings or {}).get(length)
        if value is None:
            value = self._global_value(length)
        if isinstance(value, EnumValue):
            value = value.value
        if not isinstance(value, int):
            raise EkidenError(
                f"the hint length `{length}` is neither a field, an integer variable nor a number; "
                "fix the EKIDEN_HINT_ARRAY/BUFFER mark."
            )
        return max(value, 0)

    def _global_value(self, name: str) -> int | EnumValue | None:
        if name in self._globals:
            return self._globals[name]
        for var in self.index.variables_named(name):
            if var.location["kind"] == "addr":
                info = self.types[strip(self.types, var.type)]
                raw = self._read(var.location["addr"] + self.live.bias, info.size or 0)
                value = self._decode(var.type, raw, 0, None, None)
                if isinstance(value, int | EnumValue):
                    self._globals[name] = value
                    return value
        return None

    # -- following pointers ------------------------------------------------

    def _follow_all(self) -> None:
        """Follow queued pointers level by level, reading each level's objects in one batch."""
        while self._queue:
            level = list(self._queue)
            self._queue.clear()
            reads: list[tuple[HeapObject, int]] = []
            for item in level:
                new = self._resolve(item)
                if new is not None:
                    reads.append(new)
            self._resolve_strings()
            self._read_objects(reads)

    def _resolve(self, item: _Follow) -> tuple[HeapObject, int] | None:
        """Set the pointer's target; return a new heap object to read with its element type."""
        pointer, addr = item.pointer, item.pointer.addr
        if addr == 0:
            return None
        pointee = strip(self.types, item.pointee) if item.pointee in self.types else -1
        pinfo = self.types.get(pointee)
        hint = item.hint
        if pinfo is not None and pinfo.kind == "function":
            found = self.live.symbol_at(addr)
            pointer.target = FunctionRef(found[0] if found and found[1] == 0 else None)
            return None
        if hint is not None and hint.kind == "opaque":
            pointer.target = Unfollowed("opaque")
            return None
        region = self.live.region(addr)
        is_char = pinfo is not None and pinfo.kind == "base" and pinfo.encoding in CHAR_ENCODINGS
        if region in ("data", "code"):
            if region == "code" and is_char:
                pointer.target = LiteralRef(self.tracee.read_cstring(addr, MAX_STRING))
                return None
            found = self.live.symbol_at(addr)
            pointer.target = GlobalRef(*found) if found else Unfollowed("data without a symbol")
            return None
        if region != "heap":
            pointer.target = Unfollowed(region)
            return None
        if hint is not None and hint.kind == "points_to" and hint.target:
            pointee = self.index.type_by_name(hint.target)
            if pointee is None:
                raise EkidenError(
                    f"the hint type `{hint.target}` is not known to the debug info; fix the hint."
                )
            pointee = strip(self.types, pointee)
            pinfo = self.types[pointee]
            is_char = False
        existing = self._object_at(addr)
        if existing is not None:
            obj, offset = existing
            pointer.target = ObjectRef(obj.id, offset)
            return None
        if hint is not None and hint.kind == "buffer":
            data = self._read(addr, item.count or 0)
            obj = self._new_object(addr, CHAR_TYPE, len(data), max(len(data), 1))
            obj.string, obj.is_buffer = data, True
            pointer.target = ObjectRef(obj.id)
            return None
        if pinfo is None or pinfo.kind == "void":
            pointer.target = Unfollowed("untyped")
            return None
        if is_char and hint is None:
            self._strings.append((pointer, pointee))  # read with the level's other strings
            return None
        count = item.count if item.count is not None else 1
        obj = self._new_object(addr, pointee, count, (pinfo.size or 0) * count)
        pointer.target = ObjectRef(obj.id)
        return obj, pointee

    def _new_object(self, addr: int, type_id: int, count: int, extent: int) -> HeapObject:
        """A new heap object; `type_id` CHAR_TYPE stands for the bytes of a hinted buffer."""
        if extent > MAX_BYTES:
            self._account(extent)  # raises: no object that large is state worth reading
        if len(self.objects) >= MAX_OBJECTS:
            raise CaptureLimit(
                f"the tagged state reaches more than {MAX_OBJECTS} heap objects; add hints to "
                "stop following pointers that are not state (EKIDEN_HINT_OPAQUE)."
            )
        name = "char" if type_id == CHAR_TYPE else self._type_name(type_id)
        oid = len(self.objects) + 1
        obj = self.objects[oid] = HeapObject(oid, addr, name, count, type_id)
        extent = self._extents[oid] = max(extent, 1)
        self._by_start[addr] = oid
        by_line = self._by_line
        for line in range(addr >> LINE_SHIFT, (addr + extent - 1 >> LINE_SHIFT) + 1):
            if line in by_line:
                by_line[line].append(oid)
            else:
                by_line[line] = [oid]
        return obj

    def _object_at(self, addr: int) -> tuple[HeapObject, int] | None:
        """The captured object holding `addr` (start or inside), with the offset."""
        oid = self._by_start.get(addr)
        if oid is not None:
            return self.objects[oid], 0
        for oid in self._by_line.get(addr >> LINE_SHIFT, ()):
            obj = self.objects[oid]
            if obj.addr <= addr < obj.addr + self._extents[oid]:
                return obj, addr - obj.addr
        return None

    def _resolve_strings(self) -> None:
        """Point the level's char pointers at string objects, reading new strings in batches."""
        pending, self._strings = self._strings, []
        char_type: dict[int, int] = {}
        for pointer, pointee in pending:
            if self._object_at(pointer.addr) is None:
                char_type.setdefault(pointer.addr, pointee)
        unknown = sorted(char_type)
        texts = self._read_strings(unknown)
        end = 0
        for addr in unknown:  # ascending, so a pointer into a string just read is seen
            if addr < end:
                continue
            text = texts[addr]
            self._account(len(text) + 1)
            obj = self._new_object(addr, char_type[addr], len(text), len(text) + 1)
            obj.string = text
            end = addr + len(text) + 1
        for pointer, _ in pending:
            found = self._object_at(pointer.addr)
            assert found is not None, "every string was registered above"
            pointer.target = ObjectRef(found[0].id, found[1])

    def _read_strings(self, starts: list[int]) -> dict[int, bytes]:
        """NUL-terminated strings (without the NUL, at most MAX_STRING bytes), read
        together: a short probe each, then page by page for those still unterminated."""
        parts: dict[int, list[bytes]] = {start: [] for start in starts}
        cursor = {start: start for start in starts}  # where each unfinished string goes on
        while cursor:
            spans = []
            for start, here in cursor.items():
                room = min(PAGE - here % PAGE, MAX_STRING - (here - start))
                spans.append((here, min(room, STRING_PROBE) if here == start else room))
            try:
                chunks = self.tracee.read_many(spans)
            except MemoryAccessError:
                # One runs into unreadable memory: read them singly, for the error's sake.
                for start in cursor:
                    parts[start] = [self.tracee.read_cstring(start, MAX_STRING)]
                break
            for (start, here), chunk in zip(list(cursor.items()), chunks, strict=True):
                nul = chunk.find(0)
                parts[start].append(chunk if nul < 0 else chunk[:nul])
                if nul >= 0 or here + len(chunk) - start >= MAX_STRING:
                    del cursor[start]
                else:
                    cursor[start] = here + len(chunk)
        return {start: b"".join(chunk) for start, chunk in parts.items()}

    def _read_objects(self, reads: list[tuple[HeapObject, int]]) -> None:
        if not reads:
            return
        sizes = [self._extents[obj.id] for obj, _ in reads]
        self._account(sum(sizes))
        spans = [(obj.addr, size) for (obj, _), size in zip(reads, sizes, strict=True)]
        try:
            blobs: list[bytes | None] = list(self.tracee.read_many(spans))
        except OSError:
            blobs = [self._read_or_none(addr, size) for addr, size in spans]
        for (obj, element), size, blob in zip(reads, sizes, blobs, strict=True):
            if blob is None:
                obj.value = None
                continue
            esize = size // obj.count if obj.count else 0
            if obj.count == 1:
                obj.value = self._decode(element, blob, 0, None, None)
            else:
                obj.value = ArrayValue(
                    [self._decode(element, blob, i * esize, None, None) for i in range(obj.count)]
                )

    def _read_or_none(self, addr: int, size: int) -> bytes | None:
        try:
            return self.tracee.read(addr, size)
        except OSError:
            return None


def _decode_base(info: TypeInfo, raw: bytes) -> int | float:
    if info.encoding == "float":
        if len(raw) == 4:
            return struct.unpack("<f", raw)[0]
        if len(raw) == 8:
            return struct.unpack("<d", raw)[0]
        mantissa = int.from_bytes(raw[:8], "little")
        exp_sign = int.from_bytes(raw[8:10], "little")
        sign = -1 if exp_sign & 0x8000 else 1
        return sign * mantissa * 2.0 ** ((exp_sign & 0x7FFF) - 16383 - 63) if mantissa else 0.0
    signed = info.encoding in ("signed", "signed_char")
    return int.from_bytes(raw, "little", signed=signed)


def _decode_bits(types: dict[int, TypeInfo], member, data: bytes, offset: int) -> int | EnumValue:
    info = types[strip(types, member.type)]
    bit_offset = member.bit_offset or 0
    first = offset + bit_offset // 8
    last = offset + (bit_offset + member.bit_size + 7) // 8
    word = int.from_bytes(data[first:last], "little") >> (bit_offset % 8)
    value = word & ((1 << member.bit_size) - 1)
    if info.encoding in ("signed", "signed_char") and value >> (member.bit_size - 1):
        value -= 1 << member.bit_size
    if info.kind == "enum":
        name = next((n for n, v in info.enumerators.items() if v == value), None)
        return EnumValue(name, value)
    return value


def _active_member(cases: list[UnionCase], fields: dict[str, Value]) -> str | None:
    for case in cases:
        value = fields.get(case.discriminant)
        if isinstance(value, EnumValue) and case.value in (value.name, str(value.value)):
            return case.member
        if isinstance(value, int) and case.value == str(value):
            return case.member
    return None
