"""Whether a transformer's result has the shape of the v2 type it is written as.

A transformer may return almost any Python value; the encoder would turn a
wrong one into a crash of the new version (a str where v2 has a `struct
account *` becomes a pointer to characters) or into a Python error half-way
through a write.  `check_shape` walks the whole result first, so a wrong one is
refused, with the path of the wrong part, before any byte of it is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ekiden_trace.binary.dwarf.types import TypeInfo, c_name, get, strip
from ekiden_trace.state.snapshot import (
    ArrayValue,
    CharArray,
    EnumValue,
    Pointer,
    StructValue,
    UnionValue,
)
from ekiden_trace.state.views import New, View

_MAX_DEPTH = 64
_NUMBER = (bool, int, float, EnumValue)


class ShapeError(Exception):
    """A part of a transformer's result does not fit its v2 type: `path` and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def describe(value: Any) -> str:
    """A value's kind as a transformer author would name it."""
    if value is None:
        return "None"
    if isinstance(value, View):
        return f"a view of {value.type_name or 'an old value'}"
    if isinstance(value, New):
        return f"a new {value.type_name}"
    return f"a {type(value).__name__}"


def check_shape(
    types: dict[int, TypeInfo],
    named: Callable[[str], int],
    value: Any,
    tid: int,
    path: str,
) -> None:
    """ShapeError unless `value` can be written as v2's type `tid`; `named` finds a v2
    type by its C name, pointers included, and raises when v2 has none (for the objects
    a transformer makes with ctx.new)."""
    _Checker(types, named).check(value, tid, path, 0)


class _Checker:
    def __init__(self, types: dict[int, TypeInfo], named: Callable[[str], int]) -> None:
        self.types = types
        self.named = named
        self.seen: set[int] = set()  # New objects already checked (they may form cycles)

    def check(self, value: Any, tid: int | None, path: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        if isinstance(value, View):
            value = value.raw
        info = get(self.types, strip(self.types, tid))
        kind = info.kind
        if kind in ("base", "enum"):
            self._scalar(value, info, path)
        elif kind == "pointer":
            self._pointer(value, info, path, depth)
        elif kind == "struct":
            self._struct(value, info, path, depth)
        elif kind == "union":
            self._union(value, info, path, depth)
        elif kind == "array":
            self._array(value, info, path, depth)
        else:
            self._wrong(value, info, path)

    def _wrong(self, value: Any, info: TypeInfo, path: str) -> None:
        raise ShapeError(path, f"{describe(value)} cannot be written as v2's {self._name(info)}")

    def _name(self, info: TypeInfo) -> str:
        return c_name(self.types, info.id)

    def _scalar(self, value: Any, info: TypeInfo, path: str) -> None:
        if isinstance(value, _NUMBER):
            return
        if info.kind == "enum" and isinstance(value, str):
            if value not in info.enumerators:
                raise ShapeError(
                    path, f"{self._name(info)} has no enumerator {value} in v2 (a str was given)"
                )
            return
        self._wrong(value, info, path)

    def _pointer(self, value: Any, info: TypeInfo, path: str, depth: int) -> None:
        if value is None or isinstance(value, Pointer) or type(value) is int:
            return  # NULL, an old pointer (mapped by the encoder), an address in v2
        target = get(self.types, strip(self.types, info.target))
        if isinstance(value, str | bytes) and (_is_char(target) or target.kind == "void"):
            return
        if isinstance(value, New):
            self._new(value, target, path, depth)
            return
        self._wrong(value, info, path)

    def _new(self, new: New, target: TypeInfo, path: str, depth: int) -> None:
        element = get(self.types, strip(self.types, self.named(new.type_name)))
        same = self._name(element) == self._name(target) or (_is_char(element) and _is_char(target))
        if target.kind != "void" and not same:
            raise ShapeError(
                path,
                f"a new {new.type_name} cannot be pointed to by v2's "
                f"{c_name(self.types, target.id)} *",
            )
        if id(new) in self.seen or isinstance(new.value, bytes):
            return
        self.seen.add(id(new))
        if new.count != 1 or isinstance(new.value, list | tuple):  # ctx.array, one item too
            if not isinstance(new.value, list | tuple):
                raise ShapeError(path, f"{new.count} elements need a list, not {describe(new)}")
            for i, item in enumerate(new.value):
                self.check(item, element.id, f"{path}[{i}]", depth + 1)
        else:
            self.check(new.value, element.id, f"{path}->", depth + 1)

    def _struct(self, value: Any, info: TypeInfo, path: str, depth: int) -> None:
        if isinstance(value, StructValue):
            return  # an old struct: converted field by field, by name
        if not isinstance(value, dict):
            self._wrong(value, info, path)
            return
        members = {m.name: m for m in info.members if m.name}
        for name, item in value.items():
            member = members.get(name)
            if member is None:
                raise ShapeError(path, f"v2's {self._name(info)} has no field {name}")
            self.check(item, member.type, _member(path, name), depth + 1)

    def _union(self, value: Any, info: TypeInfo, path: str, depth: int) -> None:
        if isinstance(value, UnionValue):
            return
        if not isinstance(value, dict) or len(value) != 1:
            raise ShapeError(
                path,
                f"{describe(value)} cannot be written as v2's {self._name(info)}; "
                "give a dict of one member",
            )
        ((name, item),) = value.items()
        member = next((m for m in info.members if m.name == name), None)
        if member is None:
            raise ShapeError(path, f"v2's {self._name(info)} has no member {name}")
        self.check(item, member.type, _member(path, name), depth + 1)

    def _array(self, value: Any, info: TypeInfo, path: str, depth: int) -> None:
        element = get(self.types, strip(self.types, info.target))
        if isinstance(value, ArrayValue):
            return
        if isinstance(value, CharArray | str | bytes):
            if _is_char(element):
                return
            self._wrong(value, info, path)
        if not isinstance(value, list | tuple):
            self._wrong(value, info, path)
        for i, item in enumerate(value[: info.count or 0]):
            self.check(item, element.id, f"{path}[{i}]", depth + 1)


def _is_char(info: TypeInfo) -> bool:
    return info.kind == "base" and info.size == 1 and info.encoding != "bool"


def _member(path: str, name: str) -> str:
    """The path of a member: `p.name`, or `p->name` inside an object a pointer reaches."""
    return f"{path}{name}" if path.endswith("->") else f"{path}.{name}"
