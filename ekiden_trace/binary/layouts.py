"""Struct layouts, compiled once per type, so that one `struct.unpack_from` call
reads every scalar and pointer member of an object.

Members a single format cannot express (nested aggregates, arrays, bit fields,
unusual scalar sizes) are listed apart, for the caller to decode one by one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ekiden_trace.binary.dwarf.types import Member, TypeInfo, c_name, get, strip

_INTEGER_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}
_FLOAT_CODES = {4: "f", 8: "d"}
SIGNED = ("signed", "signed_char")
UNSIGNED = ("unsigned", "unsigned_char", "bool")


@dataclass(frozen=True)
class PackedMember:
    """A member read by the layout's format: 'number', 'enum' or 'pointer'."""

    key: str
    name: str | None
    role: str
    type_id: int  # the member's type, typedefs and qualifiers stripped


@dataclass(frozen=True)
class StructLayout:
    """How to read one struct type."""

    name: str
    keys: tuple[str, ...]  # every member, in declaration order
    packed: struct.Struct | None
    packed_members: tuple[PackedMember, ...]
    other: tuple[tuple[str, Member], ...]  # decoded one by one, in declaration order


def member_key(member: Member, index: int) -> str:
    """The key of a member in a decoded struct: its name, or a stand-in for anonymous ones."""
    return member.name or f"(anonymous {index})"


def scalar_code(info: TypeInfo) -> str | None:
    """The struct-module code of a base, enum or pointer type, or None if it has none."""
    size = info.size or 0
    if info.kind == "pointer":
        return "Q" if size == 8 else None
    if info.kind == "base" and info.encoding == "float":
        return _FLOAT_CODES.get(size)
    if info.kind in ("base", "enum") and info.encoding in SIGNED + UNSIGNED:
        code = _INTEGER_CODES.get(size)
        if code is None:
            return None
        return code if info.encoding in SIGNED else code.upper()
    return None


def holds_pointer(types: dict[int, TypeInfo], tid: int | None, depth: int = 0) -> bool:
    """Whether a value of type `tid` holds a pointer, directly or in a member or element."""
    info = get(types, strip(types, tid))
    if info.kind == "pointer" or depth > 32:
        return True
    if info.kind in ("struct", "union"):
        return any(holds_pointer(types, m.type, depth + 1) for m in info.members)
    return info.kind == "array" and holds_pointer(types, info.target, depth + 1)


def compile_layout(types: dict[int, TypeInfo], tid: int) -> StructLayout:
    """The layout of struct type `tid` (already stripped)."""
    info = get(types, tid)
    fmt = ["<"]
    packed: list[PackedMember] = []
    other: list[tuple[int, str, Member]] = []
    position = 0
    for index, member in sorted(enumerate(info.members), key=lambda m: m[1].offset):
        key = member_key(member, index)
        mtype = get(types, strip(types, member.type))
        code = None if member.bit_size else scalar_code(mtype)
        if code is None or member.offset < position:
            other.append((index, key, member))
            continue
        fmt.append("x" * (member.offset - position) + code)
        position = member.offset + struct.calcsize("<" + code)
        role = {"pointer": "pointer", "enum": "enum"}.get(mtype.kind, "number")
        packed.append(PackedMember(key, member.name, role, mtype.id))
    return StructLayout(
        name=c_name(types, tid),
        keys=tuple(member_key(m, i) for i, m in enumerate(info.members)),
        packed=struct.Struct("".join(fmt)) if packed else None,
        packed_members=tuple(packed),
        other=tuple((key, member) for _, key, member in sorted(other, key=lambda o: o[0])),
    )
