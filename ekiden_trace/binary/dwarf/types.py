"""The type model: C types as read from DWARF, and how to print them.

A type is a TypeInfo keyed by its DIE offset in a ``dict[int, TypeInfo]``.
Types refer to each other by id, so the model is plain data that round-trips
through JSON (see ``to_json``/``from_json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VOID_ID = -1
"""Id of the ``void`` pseudo-type (pointer to void, missing DW_AT_type)."""

QUALIFIERS = frozenset({"const", "volatile", "restrict", "atomic"})
_TRANSPARENT = QUALIFIERS | {"typedef"}
_QUALIFIER_WORD = {
    "const": "const",
    "volatile": "volatile",
    "restrict": "restrict",
    "atomic": "_Atomic",
}
_TAGGED = frozenset({"struct", "union", "enum"})


@dataclass
class Member:
    """A struct or union member.

    ``offset`` is in bytes from the start of the aggregate.  For a bit-field,
    ``bit_size`` is its width and ``bit_offset`` its first bit counted from
    the start of the aggregate (little-endian bit numbering, as DWARF 5's
    DW_AT_data_bit_offset); ``offset`` is then ``bit_offset // 8``.
    Anonymous struct/union members have ``name`` None.
    """

    name: str | None
    offset: int
    type: int
    bit_size: int | None = None
    bit_offset: int | None = None


@dataclass
class TypeInfo:
    """One C type.

    kind: base, pointer, struct, union, enum, array, typedef, const, volatile,
    restrict, atomic, function or void.  ``target`` is the pointee, the
    element type (arrays), the aliased or qualified type, the underlying
    integer type of an enum, or the return type of a function.  Arrays have
    one dimension each (``int [3][4]`` is an array of 3 arrays of 4 ints);
    ``count`` is None when unknown (flexible array members).  Functions have
    ``params`` (None when unprototyped) and ``variadic``.  ``encoding`` is
    the signedness or kind of a base type or enum: signed, unsigned,
    signed_char, unsigned_char, bool, float, complex_float, utf, ...
    ``declaration`` marks an incomplete struct/union/enum (no size, no members).
    """

    id: int
    kind: str
    name: str | None = None
    size: int | None = None
    target: int | None = None
    members: list[Member] = field(default_factory=list)
    enumerators: dict[str, int] = field(default_factory=dict)
    encoding: str | None = None
    count: int | None = None
    params: list[int] | None = None
    variadic: bool = False
    declaration: bool = False

    def to_json(self) -> list[Any]:
        """Compact JSON form (a list), the inverse of ``from_json``."""
        return [
            self.id,
            self.kind,
            self.name,
            self.size,
            self.target,
            [[m.name, m.offset, m.type, m.bit_size, m.bit_offset] for m in self.members],
            self.enumerators,
            self.encoding,
            self.count,
            self.params,
            self.variadic,
            self.declaration,
        ]

    @classmethod
    def from_json(cls, row: list[Any]) -> TypeInfo:
        """Rebuild a TypeInfo from ``to_json`` output."""
        return cls(
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            [Member(*m) for m in row[5]],
            row[6],
            row[7],
            row[8],
            row[9],
            row[10],
            row[11],
        )


VOID = TypeInfo(VOID_ID, "void", "void")

_INT_WORDS = frozenset({"signed", "unsigned", "short", "long", "int", "char"})


def normalize_base_name(name: str) -> str:
    """Spell an integer type name the way C programmers do.

    gcc names ``unsigned long`` "long unsigned int"; this returns
    "unsigned long".  Other names are returned unchanged.
    """
    words = name.split()
    if len(words) < 2:
        return name
    if "__int128" in words and set(words) <= {"__int128", "unsigned", "signed"}:
        return "unsigned __int128" if "unsigned" in words else "__int128"
    if not set(words) <= _INT_WORDS:
        return name
    out: list[str] = []
    if "unsigned" in words:
        out.append("unsigned")
    elif "signed" in words and "char" in words:
        out.append("signed")
    longs = words.count("long")
    if "short" in words:
        out.append("short")
    elif longs:
        out.extend(["long"] * longs)
    if "char" in words:
        out.append("char")
    elif not out or out == ["unsigned"]:
        out.append("int")
    return " ".join(out)


def get(types: dict[int, TypeInfo], tid: int | None) -> TypeInfo:
    """Return the type with id tid; None, VOID_ID or an unknown id give void."""
    if tid is None:
        return VOID
    return types.get(tid, VOID)


def strip(types: dict[int, TypeInfo], tid: int | None) -> int:
    """Follow typedefs and qualifiers to the underlying type's id."""
    seen = 0
    current = VOID_ID if tid is None else tid
    while True:
        t = get(types, current)
        if t.kind not in _TRANSPARENT or seen > 64:
            return t.id
        current = VOID_ID if t.target is None else t.target
        seen += 1


def byte_size(types: dict[int, TypeInfo], tid: int | None) -> int | None:
    """Size in bytes of a type (None for void, functions and unknown sizes)."""
    t = get(types, strip(types, tid))
    if t.kind == "array":
        if t.size is not None:
            return t.size
        if t.count is None:
            return None
        elem = byte_size(types, t.target)
        return None if elem is None else elem * t.count
    if t.kind in ("void", "function"):
        return None
    return t.size


def c_name(types: dict[int, TypeInfo], tid: int | None, declarator: str = "") -> str:
    """Print a type as C does: ``char *[64]``, or with a declarator, ``char *names[64]``."""
    t = get(types, tid)
    quals: list[str] = []  # qualifiers met on the way, not yet placed
    for _ in range(256):
        kind = t.kind
        if kind in QUALIFIERS:
            word = _QUALIFIER_WORD[kind]
            if word not in quals:
                quals.append(word)
            t = get(types, t.target)
        elif kind == "pointer":
            if quals:  # qualifiers of the pointer itself: "char *const p"
                declarator = " ".join(quals) + (" " + declarator if declarator else "")
                quals = []
            declarator = "*" + declarator
            t = get(types, t.target)
            if t.kind in ("array", "function"):
                declarator = f"({declarator})"
        elif kind == "array":  # qualifiers of an array belong to its elements
            declarator += f"[{'' if t.count is None else t.count}]"
            t = get(types, t.target)
        elif kind == "function":
            declarator += _params(types, t)
            quals = []
            t = get(types, t.target)
        else:
            return _join(" ".join([*quals, _leaf_name(t)]), declarator)
    return _join("...", declarator)


def _leaf_name(t: TypeInfo) -> str:
    if t.kind in _TAGGED:
        return f"{t.kind} {t.name or '{...}'}"
    return t.name or "void"


def _params(types: dict[int, TypeInfo], t: TypeInfo) -> str:
    if t.params is None:
        return "()"
    names = [c_name(types, p) for p in t.params]
    if t.variadic:
        names.append("...")
    return f"({', '.join(names) or 'void'})"


def _join(base: str, declarator: str) -> str:
    if not declarator:
        return base
    return f"{base} {declarator}"
