"""Turn old values into bytes of the new version's types, inside the new process.

The old snapshot is version-neutral (fields by name, enums by enumerator,
pointers by object or symbol), so conversion is driven by the new type alone:
fields match by name, integers are range-checked, enumerators map by name,
arrays are cut or keep v2's tail, and heap objects are allocated with the new
program's own malloc, in one batch per wave of newly reached objects.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ekiden_trace.binary.dwarf.types import Member, TypeInfo, c_name, get, strip
from ekiden_trace.binary.layouts import holds_pointer
from ekiden_trace.binary.program import Program
from ekiden_trace.errors import EkidenError
from ekiden_trace.native.build import core
from ekiden_trace.plan.transformers import TransformerFn, Transformers, run_transformer
from ekiden_trace.state.core.place import NotExpressible, Placer, integer_bounds
from ekiden_trace.state.interior import moved_offset
from ekiden_trace.state.shape import ShapeError, check_shape
from ekiden_trace.state.snapshot import (
    CARRIED,
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
    Target,
    Unfollowed,
    UnionValue,
)
from ekiden_trace.state.views import Context, New, NewProcess, View, wrap

Unit = HeapObject | New
_MemberSource = tuple[Member, TransformerFn | None, str]
"""A v2 member, the field transformer that makes it (if any), and the v1 field it takes."""


def _key(unit: Unit) -> int | New:
    return unit.id if isinstance(unit, HeapObject) else unit


class _Placed(dict):
    """Units by key, and behind them what the compiled path placed (by object id)."""

    def __init__(self, placed: Callable[[int], int | None]) -> None:
        super().__init__()
        self.placed = placed

    def __missing__(self, key: int | New) -> int:
        value = self.placed(key) if type(key) is int else None
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or (type(key) is int and self.placed(key) is not None)


class ConversionError(EkidenError):
    """A value cannot be carried into the new version's type."""

    exit_code = 8


class Backend(NewProcess, Protocol):
    """What encoding needs from the new process (transformers call into it too)."""

    def malloc_many(self, sizes: Sequence[int]) -> Sequence[int]: ...
    def string(self, text: str | bytes) -> int: ...
    def symbol_address(self, name: str) -> int: ...
    def write(self, addr: int, data: bytes) -> None: ...
    def write_later(self, addr: int, data: bytes) -> None: ...
    def flush(self) -> None: ...


class Encoder:
    """Encodes old values for the new program and materialises the heap they reach."""

    def __init__(
        self,
        old: Program,
        new: Program,
        snapshot: Snapshot,
        transformers: Transformers,
        backend: Backend,
    ) -> None:
        self.old = old
        self.new = new
        self.types: dict[int, TypeInfo] = new.index.types
        self.old_types: dict[int, TypeInfo] = old.index.types
        self.snapshot = snapshot
        self.transformers = transformers
        self.backend = backend
        self.context = Context(snapshot, backend, self.set_field)
        self._placer: Placer | None = None  # the compiled path (core/place.py)
        self._declined = False  # it declined once: the Python path places the rest
        self.addresses: dict[int | New, int] = _Placed(self._placed_address)
        self._element: dict[int | New, int] = _Placed(self._placed_element)
        # Per-type facts, worked out once: encoding runs once per field of every object.
        self._infos: dict[int | None, TypeInfo] = {}
        self._ranges: dict[int, tuple[int, int]] = {}
        self._struct_plans: dict[int, tuple[str, list[_MemberSource]]] = {}
        self._pointer_members: dict[int, list[Member]] = {}
        self.objects_written = 0
        self.bytes_written = 0
        self.place_timings: dict[str, float] = {}  # the compiled path's phases, for the bench

    # -- heap objects --------------------------------------------------------
    # An allocation unit is a captured heap object (keyed by its id) or a New
    # object a transformer asked for (keyed by itself).

    def materialise(self, roots: list[tuple[Any, int]]) -> None:
        """Allocate and write every heap object reachable from (value, new type) roots.

        The whole graph is found first, so all of it is allocated in one batch.
        """
        found: list[Unit] = []
        for value, tid in roots:
            self._discover(value, tid, found, 0)
        if found and self._place(found):
            return
        scanned = 0
        while scanned < len(found):
            self._discover_unit(found[scanned], found)
            scanned += 1
        if not found:
            return
        sizes = [self._unit_size(unit) for unit in found]
        for unit, addr in zip(found, self.backend.malloc_many(sizes), strict=True):
            self.addresses[_key(unit)] = addr
        for unit, size in zip(found, sizes, strict=True):
            self._write_unit(unit, size)
        self.backend.flush()

    def _place(self, found: list[Unit]) -> bool:
        """Place the heap reached from `found` by the compiled path (core/place.py); False
        when it declines, before anything is allocated (then the Python path runs, and
        the compiled path stays off for this heap: place.c does not know what Python placed,
        while Python finds what place.c placed through `addresses` and `_element`)."""
        heap = self.snapshot.heap
        if self._declined or heap is None or core() is None:
            return False
        try:
            if any(isinstance(unit, New) for unit in found):
                raise NotExpressible("a transformer made an object")
            if self._placer is None:
                self._placer = Placer(self, heap)
            seeds = [(u, self._element[u.id]) for u in found if isinstance(u, HeapObject)]
            objects, size = self._placer.place(seeds)
        except NotExpressible:
            self._declined = True
            return False
        self.place_timings = dict(self._placer.timings)
        self.objects_written += objects
        self.bytes_written += size
        return True

    def _placed_address(self, object_id: int) -> int | None:
        return (self._placer.address(object_id) or None) if self._placer else None

    def _placed_element(self, object_id: int) -> int | None:
        return self._placer.element(object_id) if self._placer else None

    def _unit_size(self, unit: Unit) -> int:
        if isinstance(unit, New) and isinstance(unit.value, bytes):
            return len(unit.value)
        if isinstance(unit, HeapObject) and unit.string is not None:
            return max(len(unit.string) + (0 if unit.is_buffer else 1), 1)
        return max((get(self.types, self._element[_key(unit)]).size or 0) * unit.count, 1)

    def _unit_items(self, unit: Unit) -> list[Any]:
        value = unit.value
        if isinstance(value, bytes) or (isinstance(unit, HeapObject) and unit.string is not None):
            return []
        if unit.count != 1 or (isinstance(unit, New) and isinstance(value, list)):
            return value.items if isinstance(value, ArrayValue) else list(value)  # ctx.array
        return [value]

    def _discover_unit(self, unit: Unit, found: list[Unit]) -> None:
        element = self._element[_key(unit)]
        for item in self._unit_items(unit):
            self._discover(item, element, found, 0)

    def _discover(self, value: Any, tid: int, found: list[Unit], depth: int) -> None:
        if depth > 64 or value is None or type(value) is int:
            return
        info = self._info(tid)
        if type(value) is Pointer:
            if isinstance(value.target, ObjectRef):
                self._discover_object(value.target.object_id, info, found)
            return
        if isinstance(value, View):
            value = value.as_value()
        if isinstance(value, New):
            if value not in self._element:
                self._element[value] = self._named_type(value.type_name)
                found.append(value)
            return
        if isinstance(value, Pointer) and isinstance(value.target, ObjectRef):
            self._discover_object(value.target.object_id, info, found)
            return
        if info.kind == "struct" and isinstance(value, StructValue | dict):
            fields = value.fields if isinstance(value, StructValue) else value
            if isinstance(value, StructValue) and self.transformers.for_type(value.type_name):
                return
            sources = {m.name: source for m, _, source in self._struct_plan(info)[1]}
            for member in self._members_with_pointers(info):
                source = sources.get(member.name, member.name)
                if source in fields:
                    self._discover(fields[source], member.type, found, depth + 1)
        elif isinstance(value, UnionValue) and info.kind == "union" and value.active:
            member = next((m for m in info.members if m.name == value.active), None)
            if member is not None and value.active in value.members:
                self._discover(value.members[value.active], member.type, found, depth + 1)
        elif (
            info.kind == "array"
            and info.target is not None
            and isinstance(value, ArrayValue | list)
        ):
            items = value.items if isinstance(value, ArrayValue) else value
            for item in items[: info.count or 0]:
                self._discover(item, info.target, found, depth + 1)

    def _discover_object(self, object_id: int, pointer: TypeInfo, found: list[Unit]) -> None:
        if object_id not in self._element:
            obj = self.snapshot.objects[object_id]
            self._element[object_id] = self._pointee(pointer, obj)
            found.append(obj)

    def _info(self, tid: int | None) -> TypeInfo:
        """v2's type `tid`, typedefs and qualifiers stripped."""
        info = self._infos.get(tid)
        if info is None:
            info = self._infos[tid] = get(self.types, strip(self.types, tid))
        return info

    def _members_with_pointers(self, info: TypeInfo) -> list[Member]:
        """The members of a struct that hold a pointer, directly or inside them."""
        members = self._pointer_members.get(info.id)
        if members is None:
            members = [m for m in info.members if holds_pointer(self.types, m.type)]
            self._pointer_members[info.id] = members
        return members

    def _named_type(self, type_name: str) -> int:
        """A v2 type by its C name, pointers included ('struct entry *')."""
        base_name = type_name.rstrip("* ")
        found = self.new.index.type_by_name(base_name)
        if found is None:
            raise ConversionError(f"v2 has no type {base_name}, which a transformer asked for.")
        tid = strip(self.types, found)
        for _ in range(type_name.count("*")):
            pointer = next(
                (
                    t.id
                    for t in self.types.values()
                    if t.kind == "pointer" and strip(self.types, t.target) == tid
                ),
                None,
            )
            if pointer is None:
                raise ConversionError(f"v2 has no pointer type {type_name}; name its target type.")
            tid = pointer
        return tid

    def _pointee(self, pointer: TypeInfo, obj: HeapObject) -> int:
        """The new element type of an object reached through a new pointer type: the type of
        v2 named as the object's, when the pointer's is another (a pointer to a field of
        it, or a void pointer), else the pointer's."""
        target = strip(self.types, pointer.target) if pointer.kind == "pointer" else -1
        void = get(self.types, target).kind == "void"
        if void or c_name(self.types, target) != obj.type_name:
            named = self.new.index.type_by_name(obj.type_name)
            if named is not None:
                return strip(self.types, named)
            if void:
                raise ConversionError(
                    f"v2 has no type {obj.type_name} for a heap object reached through a void "
                    "pointer; give a transformer."
                )
        return target

    def _write_unit(self, unit: Unit, size: int) -> None:
        buf = bytearray(size)
        key = _key(unit)
        path = f"#{unit.id} {unit.type_name}" if isinstance(unit, HeapObject) else unit.type_name
        if isinstance(unit, HeapObject) and unit.string is not None:
            buf[: len(unit.string)] = unit.string
        elif isinstance(unit.value, bytes):
            buf[:] = unit.value
        else:
            element = self._element[key]
            esize = get(self.types, element).size or 0
            items = self._unit_items(unit)
            for i, item in enumerate(items):
                where = f"{path}[{i}]" if unit.count != 1 else path
                self.encode(item, element, buf, i * esize, where)
        self.backend.write_later(self.addresses[key], bytes(buf))
        self.objects_written += 1
        self.bytes_written += size

    def set_field(self, address: int, type_name: str, field_name: str, value: Any) -> None:
        """Write one field of a new-version struct that lives at `address`."""
        info = get(self.types, self._named_type(type_name))
        member = next((m for m in info.members if m.name == field_name), None)
        if member is None or member.bit_size:
            raise ConversionError(f"v2's {type_name} has no plain field {field_name}.")
        buf = bytearray(get(self.types, strip(self.types, member.type)).size or 0)
        self.encode(value, member.type, buf, 0, f"{type_name}.{field_name}")
        self.backend.write(address + member.offset, bytes(buf))

    # -- values --------------------------------------------------------------

    def transform(self, fn: TransformerFn, target: str, old: Any, tid: int, path: str) -> Any:
        """Run `fn`, the transformer of `target`, and check its whole result against v2's
        type `tid` (written at `path`) before any of it is written."""
        value = run_transformer(fn, target, old, self.context)
        try:
            check_shape(self.types, self._named_type, value, tid, path)
        except ShapeError as wrong:
            name = getattr(fn, "__name__", repr(fn))
            raise ConversionError(
                f"the transformer {name} (of {target}) returned a value v2 cannot hold: {wrong}."
            ) from None
        return value

    def encode(self, value: Any, tid: int, buf: bytearray, offset: int, path: str) -> None:
        """Write `value` as new type `tid` into buf[offset:]; bytes it does not cover stay."""
        info = self._info(tid)
        if type(value) is int and info.kind in ("base", "enum") and info.encoding != "float":
            self._encode_integer(value, info, buf, offset, path)
            return
        if type(value) is Pointer and info.kind == "pointer":
            struct.pack_into("<Q", buf, offset, self._pointer(value, info, path))
            return
        if isinstance(value, View):
            value = value.as_value()
        old_type = getattr(value, "type_name", None)
        transformer = self.transformers.for_type(old_type) if old_type else None
        if transformer is not None and isinstance(value, StructValue | UnionValue | EnumValue):
            old_value = wrap(value, self.snapshot)
            value = self.transform(transformer, old_type, old_value, tid, path)
            if isinstance(value, View):
                value = value.as_value()
        kind = info.kind
        if kind == "base" and info.encoding == "float":
            fmt = {4: "<f", 8: "<d"}.get(info.size or 0)
            if fmt is None:
                raise ConversionError(f"{path}: long double values are not supported yet.")
            struct.pack_into(fmt, buf, offset, float(_scalar(value, path)))
        elif kind in ("base", "enum"):
            self._encode_integer(value, info, buf, offset, path)
        elif kind == "pointer":
            address = self._pointer(value, info, path)
            struct.pack_into("<Q", buf, offset, address)
        elif kind == "struct":
            self._encode_struct(value, info, buf, offset, path)
        elif kind == "union":
            self._encode_union(value, info, buf, offset, path)
        elif kind == "array":
            self._encode_array(value, info, buf, offset, path)

    def _encode_integer(
        self, value: Any, info: TypeInfo, buf: bytearray, offset: int, path: str
    ) -> None:
        if info.kind == "enum":
            name = value.name if isinstance(value, EnumValue) else value
            if isinstance(name, str):
                if name not in info.enumerators:
                    raise ConversionError(
                        f"{path}: enumerator {name} does not exist in v2's "
                        f"{c_name(self.types, info.id)}; give a transformer."
                    )
                value = info.enumerators[name]
        number = int(_scalar(value, path))
        size = info.size or 0
        signed = info.encoding in ("signed", "signed_char")
        bounds = self._ranges.get(info.id)
        if bounds is None:
            bounds = self._ranges[info.id] = integer_bounds(info)
        if not bounds[0] <= number <= bounds[1]:
            raise ConversionError(
                f"{path}: the value {number} does not fit v2's {c_name(self.types, info.id)}; "
                "give a transformer."
            )
        buf[offset : offset + size] = number.to_bytes(size, "little", signed=signed)

    def _pointer(self, value: Any, info: TypeInfo, path: str) -> int:
        if not isinstance(value, Pointer):
            return self._made_pointer(value, info, path)
        if value.addr == 0:
            return 0
        target = value.target
        if isinstance(target, ObjectRef):
            obj = self.snapshot.objects[target.object_id]
            if obj.id not in self.addresses:
                self.materialise([(value, info.id)])
            return self.addresses[obj.id] + self._scaled_offset(obj, target.offset, path)
        return self.outside(value.addr, target, path)

    def outside(self, addr: int, target: Target, path: str) -> int:
        """The new value of a non-null pointer to `addr`, outside the heap (`target`)."""
        if isinstance(target, FunctionRef | GlobalRef):
            if target.symbol is None:
                raise ConversionError(f"{path}: points into a function that has no symbol.")
            offset = target.offset if isinstance(target, GlobalRef) else 0
            return self.backend.symbol_address(target.symbol) + offset
        if isinstance(target, LiteralRef):
            return self._new_string(target.text)
        if isinstance(target, Unfollowed) and target.reason in CARRIED:
            return addr
        reason = target.reason if isinstance(target, Unfollowed) else "unknown"
        raise ConversionError(
            f"{path}: a pointer to {addr:#x} ({reason}) cannot be carried over; "
            "add a hint or a transformer."
        )

    def _made_pointer(self, value: Any, info: TypeInfo, path: str) -> int:
        """A pointer a transformer gave as something other than an old pointer."""
        if value is None or value == 0:
            return 0
        if isinstance(value, int):
            return value  # an address in the new process, e.g. from ctx.call
        if isinstance(value, New):
            if value not in self.addresses:
                self.materialise([(value, info.id)])
            return self.addresses[value]
        if isinstance(value, str | bytes):
            return self._new_string(value)
        raise ConversionError(f"{path}: a pointer cannot be made from {type(value).__name__}.")

    def _new_string(self, text: str | bytes) -> int:
        """A new C string on v2's heap, counted with the objects written."""
        self.objects_written += 1
        self.bytes_written += len(text) + 1
        return self.backend.string(text)

    def _scaled_offset(self, obj: HeapObject, offset: int, path: str) -> int:
        """Map an interior offset of an old object onto its new layout (interior.py)."""
        if offset == 0 or obj.string is not None:
            return offset
        moved = moved_offset(self.old_types, obj.type_id, self.types, self._element[obj.id], offset)
        if isinstance(moved, str):
            raise ConversionError(f"{path}: {moved}.")
        return moved

    def _encode_struct(
        self, value: Any, info: TypeInfo, buf: bytearray, offset: int, path: str
    ) -> None:
        fields = value.fields if isinstance(value, StructValue) else value
        if not isinstance(fields, dict):
            raise ConversionError(f"{path}: expected a struct, got {type(value).__name__}.")
        name, members = self._struct_plan(info)
        old_view = View(value, self.snapshot, name) if isinstance(value, StructValue) else None
        for member, produce, source in members:
            if produce is not None:
                new_value = self.transform(
                    produce, f"{name}.{member.name}", old_view, member.type, f"{path}.{member.name}"
                )
            elif source in fields:
                new_value = fields[source]
            else:
                continue  # a field v1 lacks keeps its initial value
            where = f"{path}.{member.name}"
            if member.bit_size:
                _encode_bits(int(_scalar(new_value, where)), member, buf, offset)
            else:
                self.encode(new_value, member.type, buf, offset + member.offset, where)

    def _struct_plan(self, info: TypeInfo) -> tuple[str, list[_MemberSource]]:
        """A struct's C name and its named members, each with the field transformer
        that produces it, if any, and the old field it takes (its own name, or the
        field it was renamed from)."""
        plan = self._struct_plans.get(info.id)
        if plan is None:
            name = c_name(self.types, info.id)
            produce, renamed = self.transformers.for_field, self.transformers.renamed_from
            members = [
                (m, produce(name, m.name), renamed(name, m.name) or m.name)
                for m in info.members
                if m.name
            ]
            plan = self._struct_plans[info.id] = (name, members)
        return plan

    def _encode_union(
        self, value: Any, info: TypeInfo, buf: bytearray, offset: int, path: str
    ) -> None:
        if isinstance(value, UnionValue):
            member = next((m for m in info.members if m.name == value.active), None)
            if member is not None and value.active in value.members:
                self.encode(value.members[value.active], member.type, buf, offset, path)
                return
            size = min(len(value.raw), info.size or 0)
            buf[offset : offset + size] = value.raw[:size]
        elif isinstance(value, dict) and len(value) == 1:
            ((name, inner),) = value.items()
            member = next((m for m in info.members if m.name == name), None)
            if member is None:
                raise ConversionError(f"{path}: v2's union has no member {name}.")
            self.encode(inner, member.type, buf, offset, f"{path}.{name}")

    def _encode_array(
        self, value: Any, info: TypeInfo, buf: bytearray, offset: int, path: str
    ) -> None:
        count = info.count or 0
        element = get(self.types, strip(self.types, info.target))
        esize = element.size or 0
        if isinstance(value, CharArray | str | bytes):
            raw = value.raw if isinstance(value, CharArray) else _bytes(value) + b"\0"
            size = min(len(raw), count * esize)
            buf[offset : offset + size] = raw[:size]
            return
        items = value.items if isinstance(value, ArrayValue) else list(value)
        for i, item in enumerate(items[:count]):
            self.encode(item, element.id, buf, offset + i * esize, f"{path}[{i}]")


def _bytes(text: str | bytes) -> bytes:
    return text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text


def _scalar(value: Any, path: str) -> int | float:
    if isinstance(value, EnumValue):
        return value.value
    if isinstance(value, bool | int | float):
        return value
    raise ConversionError(f"{path}: expected a number, got {type(value).__name__}.")


def _encode_bits(value: int, member: Any, buf: bytearray, offset: int) -> None:
    bit_offset = member.bit_offset or 0
    first = offset + bit_offset // 8
    last = offset + (bit_offset + member.bit_size + 7) // 8
    shift = bit_offset % 8
    word = int.from_bytes(buf[first:last], "little")
    mask = ((1 << member.bit_size) - 1) << shift
    word = (word & ~mask) | ((value << shift) & mask)
    buf[first:last] = word.to_bytes(last - first, "little")
