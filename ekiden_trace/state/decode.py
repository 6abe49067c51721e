"""Turning the bytes of a DWARF type into snapshot values.

Structs are read through layouts compiled once per type (binary/layouts.py);
their pointers and hinted unions are decoded last, since their hints may name
sibling fields. A pointer is classified on the spot (null, function, global,
string literal, opaque, outside the heap); one into the heap is handed to the
heap walk, which sets its target later.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ekiden_trace.binary.dwarf.model import Variable
from ekiden_trace.binary.dwarf.types import Member, TypeInfo, c_name, strip
from ekiden_trace.binary.hintexpr import Path, evaluate
from ekiden_trace.binary.hints import Length, PointerHint, UnionCase
from ekiden_trace.binary.layouts import StructLayout, compile_layout, holds_pointer, member_key
from ekiden_trace.binary.program import Program
from ekiden_trace.errors import EkidenError
from ekiden_trace.state.locate import static_address
from ekiden_trace.state.snapshot import (
    ArrayValue,
    CharArray,
    EnumValue,
    FunctionRef,
    GlobalRef,
    LiteralRef,
    Pointer,
    StructValue,
    Unfollowed,
    UnionValue,
    Value,
)
from ekiden_trace.target.address_space import LiveProcess

MAX_STRING = 1 << 20  # the longest string read, literal or on the heap
CHAR_ENCODINGS = ("signed_char", "unsigned_char")


@dataclass(slots=True)
class HeapPointer:
    """A pointer into the heap, for the heap walk to follow."""

    pointer: Pointer
    pointee: int  # the pointed-to type, stripped; -1 when unknown
    hint: PointerHint | None
    count: int | None  # elements, from an array or buffer hint's length
    shown: int | None = None  # a string with capacity: the length of its text


class AddressSource(Protocol):
    """What decoding needs to know about addresses outside the bytes it decodes: a
    stopped process (LiveSource), or what a capture learnt while it ran (lazy.py)."""

    program: Program

    def region(self, addr: int) -> str:
        """'heap', 'data', 'code', 'stack', 'library' or 'unmapped' (LiveProcess.region)."""
        ...

    def symbol_at(self, addr: int) -> tuple[str, int] | None:
        """The symbol covering addr and the offset into it."""
        ...

    def literal(self, addr: int) -> bytes:
        """The C string at addr in read-only data, without its NUL."""
        ...

    def static_address(self, var: Variable) -> int | None:
        """Where a global or static variable is, or None when unknown."""
        ...


class LiveSource:
    """The AddressSource of a stopped process."""

    def __init__(self, live: LiveProcess) -> None:
        assert live.tracee is not None, "decoding pointers needs a stopped tracee"
        self.program = live.program
        self.region = live.region
        self.symbol_at = live.symbol_at
        self._live = live

    def literal(self, addr: int) -> bytes:
        assert self._live.tracee is not None
        return self._live.tracee.read_cstring(addr, MAX_STRING)

    def static_address(self, var: Variable) -> int | None:
        return static_address(var, self._live.bias)


class Decoder:
    """Decodes values of one program's types, caching what it derives per type."""

    def __init__(
        self,
        source: AddressSource | LiveProcess,
        read: Callable[[int, int], bytes],
        to_heap: Callable[[HeapPointer], None],
    ) -> None:
        """`source` tells what addresses are (a LiveProcess stands for its LiveSource);
        `read` reads memory (for a hint length read through a pointer or held in a
        global); `to_heap` receives each pointer into the heap."""
        self.source: AddressSource = (
            LiveSource(source) if isinstance(source, LiveProcess) else source
        )
        self.index = self.source.program.index
        self.types: dict[int, TypeInfo] = self.index.types
        self.hints = self.source.program.hints
        self.globals: dict[str, int | EnumValue] = {}  # integer globals, by name
        self._read = read
        self._to_heap = to_heap
        self._stripped: dict[int, int] = {}
        self._names: dict[int, str] = {}
        self._layouts: dict[int, StructLayout] = {}
        self._enum_names: dict[int, dict[int, str]] = {}

    # -- per-type caches ---------------------------------------------------

    def type_name(self, tid: int) -> str:
        """The C name of a type."""
        name = self._names.get(tid)
        if name is None:
            name = self._names[tid] = c_name(self.types, tid)
        return name

    def strip(self, tid: int) -> int:
        """A type without its typedefs and qualifiers."""
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
        return EnumValue(names.get(value), value, self.type_name(tid))

    # -- values ------------------------------------------------------------

    def decode(self, tid: int, data: bytes, offset: int, hint: PointerHint | None = None) -> Value:
        """The value of type `tid` at `offset` in `data`; `hint` is a pointer variable's."""
        sid = self.strip(tid)
        info = self.types[sid]
        size = info.size or 0
        raw = data[offset : offset + size]
        if info.kind == "base":
            return _decode_base(info, raw)
        if info.kind == "enum":
            return self._enum(sid, int.from_bytes(raw, "little", signed=info.encoding == "signed"))
        if info.kind == "pointer":
            return self._pointer(int.from_bytes(raw, "little"), info, hint, None)
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
            mtype = self.types[self.strip(member.type)]
            if mtype.kind == "union" and member.name and (name, member.name) in self.hints.unions:
                unions.append((key, member))
            elif mtype.kind == "pointer":
                raw = data[offset + member.offset : offset + member.offset + (mtype.size or 0)]
                pointers.append((key, member.name, mtype.id, int.from_bytes(raw, "little")))
            else:
                fields[key] = self.decode(member.type, data, offset + member.offset)
        # Pointers and hinted unions last: their hints may read sibling fields.
        hinted = [
            (key, tid, addr, self.hints.fields.get((name, member_name or "")))
            for key, member_name, tid, addr in pointers
        ]
        if any(hint is not None and hint.length is not None for *_, hint in hinted):
            for key, _, addr, _ in hinted:  # a length may read through a sibling pointer
                fields[key] = Pointer(addr)
        for key, tid, addr, hint in hinted:
            fields[key] = self._pointer(addr, self.types[tid], hint, fields)
        for key, member in unions:
            cases = self.hints.unions[(name, member.name)]
            utype = self.types[self.strip(member.type)]
            active = _active_member(cases, fields)
            fields[key] = self._decode_union(utype, data, offset + member.offset, active)
        return StructValue(name, {k: fields[k] for k in layout.keys})

    def _decode_union(
        self, info: TypeInfo, data: bytes, offset: int, active: str | None
    ) -> UnionValue:
        """A union: only its `active` member, or with no hint every member free of pointers."""
        raw = data[offset : offset + (info.size or 0)]
        members: dict[str, Value] = {}
        unexplained = False
        for i, member in enumerate(info.members):
            key = member_key(member, i)
            if key == active:
                members[key] = self.decode(member.type, data, offset + member.offset)
            elif active is None and holds_pointer(self.types, member.type):
                unexplained = True
            elif active is None:
                members[key] = self.decode(member.type, data, offset + member.offset)
        return UnionValue(self.type_name(info.id), raw, active, members, unexplained)

    def _decode_array(self, info: TypeInfo, data: bytes, offset: int) -> Value:
        element = strip(self.types, info.target) if info.target is not None else -1
        einfo = self.types.get(element)
        count = info.count or 0
        if einfo is not None and is_char(einfo):
            return CharArray(data[offset : offset + count])
        esize = (einfo.size if einfo else 0) or 0
        return ArrayValue([self.decode(element, data, offset + i * esize) for i in range(count)])

    # -- pointers ----------------------------------------------------------

    def _pointer(
        self,
        addr: int,
        info: TypeInfo,
        hint: PointerHint | None,
        siblings: dict[str, Value] | None,
    ) -> Pointer:
        """A pointer value, its target set here unless it points into the heap."""
        pointer = Pointer(addr)
        if addr == 0:
            return pointer
        pointee = self.strip(info.target) if info.target in self.types else -1
        pinfo = self.types.get(pointee)
        if pinfo is not None and pinfo.kind == "function":
            found = self.source.symbol_at(addr)
            pointer.target = FunctionRef(found[0] if found and found[1] == 0 else None)
            return pointer
        if hint is not None and hint.kind == "opaque":
            pointer.target = Unfollowed("opaque")
            return pointer
        region = self.source.region(addr)
        if region == "heap":
            count = shown = None
            if hint is not None and hint.length is not None:
                count = self.length(hint.length, siblings)
            if hint is not None and hint.shown is not None:
                shown = min(self.length(hint.shown, siblings), count or 0)
            self._to_heap(HeapPointer(pointer, pointee, hint, count, shown))
        elif region == "code" and pinfo is not None and is_char(pinfo):
            pointer.target = LiteralRef(self.source.literal(addr))
        elif region in ("data", "code"):
            found = self.source.symbol_at(addr)
            pointer.target = GlobalRef(*found) if found else Unfollowed("data without a symbol")
        else:
            pointer.target = Unfollowed(region)
        return pointer

    def length(self, length: Length, siblings: dict[str, Value] | None) -> int:
        """The value of a hint's length (never negative): numbers, sibling fields (and
        paths through them, `table->key_size`) and integer variables."""

        def lookup(path: Path) -> int:
            value: Value | None = (siblings or {}).get(path[0])
            if value is None:
                value = self._global_value(path[0])
            for name, offset, size, signed, is_pointer in length.paths.get(path, ()):
                if isinstance(value, StructValue):
                    value = value.fields.get(name)
                elif isinstance(value, Pointer) and value.addr:
                    number = int.from_bytes(
                        self._read(value.addr + offset, size), "little", signed=signed
                    )
                    value = Pointer(number) if is_pointer else number
                else:
                    value = None
            if isinstance(value, EnumValue):
                value = value.value
            if not isinstance(value, int):
                raise EkidenError(
                    f"the hint length `{length.text}` reads `{'->'.join(path)}`, which holds "
                    "no integer here (a NULL pointer on its path, or a variable not captured)."
                )
            return value

        return max(evaluate(length.expr, lookup), 0)

    def _global_value(self, name: str) -> int | EnumValue | None:
        if name in self.globals:
            return self.globals[name]
        for var in self.index.variables_named(name):
            address = self.source.static_address(var)
            if address is not None:
                info = self.types[self.strip(var.type)]
                value = self.decode(var.type, self._read(address, info.size or 0), 0)
                if isinstance(value, int | EnumValue):
                    self.globals[name] = value
                    return value
        return None


def is_char(info: TypeInfo) -> bool:
    """Whether a (stripped) type is a C character type."""
    return info.kind == "base" and info.encoding in CHAR_ENCODINGS


def _decode_base(info: TypeInfo, raw: bytes) -> int | float:
    if info.encoding == "float":
        if len(raw) == 4:
            return struct.unpack("<f", raw)[0]
        if len(raw) == 8:
            return struct.unpack("<d", raw)[0]
        # x87 80-bit extended precision: 64-bit mantissa, then sign and 15-bit exponent.
        mantissa = int.from_bytes(raw[:8], "little")
        exp_sign = int.from_bytes(raw[8:10], "little")
        sign = -1 if exp_sign & 0x8000 else 1
        return sign * mantissa * 2.0 ** ((exp_sign & 0x7FFF) - 16383 - 63) if mantissa else 0.0
    signed = info.encoding in ("signed", "signed_char")
    return int.from_bytes(raw, "little", signed=signed)


def _decode_bits(
    types: dict[int, TypeInfo], member: Member, data: bytes, offset: int
) -> int | EnumValue:
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
    """The union member the hint's cases select, from the sibling discriminant's value."""
    for case in cases:
        if not case.discriminant:
            return case.member  # always the live one
        value = fields.get(case.discriminant)
        if isinstance(value, EnumValue) and case.value in (value.name, str(value.value)):
            return case.member
        if isinstance(value, int) and case.value == str(value):
            return case.member
    return None
