"""What a transformer sees and makes: views of old values, a context into the new process.

`View` wraps a captured v1 value read-only; `Context` lets a transformer read other old
variables, allocate new objects (`New`) and call the new version's own functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from ekiden_trace.plan.transformers import TransformerError
from ekiden_trace.state.snapshot import (
    ArrayValue,
    CharArray,
    EnumValue,
    ObjectRef,
    Pointer,
    Snapshot,
    StructValue,
    UnionValue,
    Value,
)


@dataclass(eq=False)
class New:
    """An object a transformer creates in the new process: `count` elements of `type_name`
    (a v2 type) holding `value` (a dict of fields, a list of elements, or bytes).  New
    objects are allocated with the new program's malloc, in one batch with the rest."""

    type_name: str
    value: Any
    count: int = 1


HELPERS = frozenset({"raw", "text", "bytes", "type_name"})
"""View attributes that give way to a struct field of the same name."""


class View:
    """A read-only view of one old value: struct fields as attributes or items, arrays
    by index and iteration, pointers followed like C's `->` (`.deref()` explicitly),
    strings with `str()`, `.as_text()` or `.text`, enums with `.name`.

    A struct field always wins over a helper attribute of the same name (`raw`, `text`,
    `bytes`, `type_name`): `view.text` is the field `text` when the struct has one, and
    the helper otherwise; `as_text()`, `as_bytes()`, `as_value()` and `type_of()` never
    collide.  The methods `deref`, `as_*` and `type_of` hide fields of the same name;
    read those as items (`view["deref"]`)."""

    def __init__(self, value: Value | None, snapshot: Snapshot, type_name: str = "") -> None:
        self._value = value
        self._snapshot = snapshot
        self._type_name = type_name

    def type_of(self) -> str:
        """The C type name of the viewed value."""
        return self._type_name

    def as_value(self) -> Value | None:
        """The underlying snapshot value."""
        return self._value

    def deref(self) -> View | None:
        """The object a pointer points to (None for NULL or a pointer not followed)."""
        value = self._value
        if isinstance(value, Pointer) and isinstance(value.target, ObjectRef):
            obj = self._snapshot.objects[value.target.object_id]
            if obj.string is not None:
                if obj.shown is not None:
                    data = obj.string[: obj.shown] + b"\0"  # a string with capacity: its text
                else:
                    data = obj.string if obj.is_buffer else obj.string + b"\0"
                return View(CharArray(data), self._snapshot, obj.type_name)
            return View(obj.value, self._snapshot, obj.type_name)
        return None

    def _struct(self) -> StructValue | UnionValue:
        value = self._value
        if isinstance(value, Pointer):
            target = self.deref()
            value = target._value if target is not None else None
        if not isinstance(value, StructValue | UnionValue):
            raise AttributeError(f"{self._type_name or 'this value'} has no fields")
        return value

    def _members(self) -> dict[str, Value]:
        fields = self._struct()
        return fields.fields if isinstance(fields, StructValue) else fields.members

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int):
            return wrap(self._items()[key], self._snapshot)
        return wrap(self._members()[key], self._snapshot)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in HELPERS:
            try:
                return self[name]
            except (AttributeError, KeyError):
                return self._helper(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{self._type_name} has no field {name}") from None

    def _helper(self, name: str) -> Any:
        if name == "raw":
            return self.as_value()
        if name == "text":
            return self.as_text()
        if name == "bytes":
            return self.as_bytes()
        return self.type_of()

    def _items(self) -> list[Value]:
        value = self._value
        if isinstance(value, Pointer):
            target = self.deref()
            value = target._value if target is not None else None
        if isinstance(value, ArrayValue):
            return value.items
        if value is None:
            return []
        return [value]

    def __iter__(self) -> Iterator[Any]:
        return (wrap(item, self._snapshot) for item in self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __bool__(self) -> bool:
        value = self._value
        return not (isinstance(value, Pointer) and value.addr == 0)

    def _chars(self, what: str) -> tuple[CharArray, bool]:
        """The char array viewed or pointed to, and whether it is a hinted buffer."""
        target, exact = self, False
        if isinstance(self._value, Pointer):
            target = self.deref()
            ref = self._value.target
            obj = self._snapshot.objects[ref.object_id] if isinstance(ref, ObjectRef) else None
            exact = obj is not None and obj.is_buffer and obj.shown is None
        if target is None or not isinstance(target._value, CharArray):
            raise TypeError(f"{self._type_name} {what}")
        return target._value, exact

    def as_bytes(self) -> bytes:
        """The exact bytes of a hinted buffer or a char array; a string's without its NUL."""
        chars, exact = self._chars("holds no bytes")
        if exact or not isinstance(self._value, Pointer):
            return chars.raw
        return chars.text

    def as_text(self) -> str:
        """A string's or char array's text."""
        chars, _ = self._chars("is not a string")
        return chars.text.decode("utf-8", "surrogateescape")

    def __str__(self) -> str:
        return self.as_text()


def wrap(value: Value | None, snapshot: Snapshot, type_name: str = "") -> Any:
    """Scalars as Python values (ints, floats, enumerator names); the rest as Views
    (of `type_name` when the value does not carry its own, as a pointer does not)."""
    if isinstance(value, int | float):
        return value
    if isinstance(value, EnumValue):
        return value.name if value.name is not None else value.value
    return View(value, snapshot, getattr(value, "type_name", type_name))


class NewProcess(Protocol):
    """The new process, as much of it as a transformer may call into."""

    def call(self, function: str, *args: int | str | bytes) -> int: ...
    def function(self, name: str) -> int: ...


class Context:
    """What a transformer may use: the whole old state and the new process."""

    def __init__(
        self,
        snapshot: Snapshot,
        process: NewProcess,
        set_field: Callable[[int, str, str, Any], None],
    ) -> None:
        """`set_field(address, v2 type name, field name, value)` writes one field."""
        self._snapshot = snapshot
        self._process = process
        self._set_field = set_field
        self.calls = 0  # calls into the new process: what they allocate is v2's own doing
        self._current: Callable[[], Any] | None = None

    def producing(self, current: Callable[[], Any] | None) -> None:
        """Set what `current` reads for the variable transformer about to run (None for
        a field or type transformer)."""
        self._current = current

    @property
    def current(self) -> Any:
        """v2's own value of the variable being produced, as v2's code left it at the tag:
        numbers as Python values, structs and arrays as Views (v2's pointers are kept as
        they are, not followed).  Returning it, or any part of it, keeps it."""
        if self._current is None:
            raise TransformerError(
                "ctx.current is v2's value at a tag: only a variable transformer has one."
            )
        return self._current()

    def old(self, name: str) -> Any:
        """Any old tagged variable, by plain name or by key (e.g. 'main:nclients')."""
        for var in self._snapshot.variables:
            if name in (var.key, var.name):
                return wrap(var.value, self._snapshot, var.c_type)
        raise KeyError(f"v1 has no tagged variable {name}")

    def call(self, function: str, *args: int | str | bytes) -> int:
        """Call a function of the new program inside the new process; str/bytes become C strings."""
        self.calls += 1
        return self._process.call(function, *args)

    def set(self, address: int, type_name: str, field_name: str, value: Any) -> None:
        """Write one field of a v2 struct at `address` in the new process."""
        self._set_field(address, " ".join(type_name.split()), field_name, value)

    def function(self, name: str) -> int:
        """The address of a function of the new program (or name@library)."""
        return self._process.function(name)

    def new(self, type_name: str, **fields: Any) -> New:
        """A new struct of v2's `type_name` on the new heap, fields by name (others zero)."""
        return New(" ".join(type_name.split()), fields)

    def array(self, type_name: str, items: list[Any]) -> New:
        """A new heap array of v2's `type_name` elements (a list, even of one)."""
        return New(" ".join(type_name.split()), list(items), len(items))

    def string(self, text: str | bytes) -> New:
        """A new NUL-terminated string on the new heap."""
        data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
        return New("char", data + b"\0", len(data) + 1)
