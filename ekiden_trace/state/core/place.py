"""The compiled restore of a heap held as columns: byte recipes, placing, one write.

For each (old type, new type) pair a *recipe* lists the byte operations that turn
one old element into the new one, exactly as `Encoder.encode` would (fields matched
through the Encoder's own struct plan, integers range-checked with its bounds, enums
mapped by name, char arrays cut, unions without pointers copied raw, pointers left to
relocate).  What a recipe cannot say raises NotExpressible, and the whole heap then
takes the Encoder's Python path.  place.c walks the closure from the roots' objects,
converts every object into one buffer, relocates pointers once the new process's
malloc batch has given the addresses, and writes them in a few large system calls.
"""

from __future__ import annotations

import ctypes
import os
import time
from array import array
from typing import Any, Protocol

from ekiden_trace.binary.dwarf.types import TypeInfo, c_name, get, strip
from ekiden_trace.binary.hints import PointerHint
from ekiden_trace.binary.layouts import holds_pointer
from ekiden_trace.errors import EkidenError
from ekiden_trace.native.build import Signatures, core, declare
from ekiden_trace.state.columns import CHAR_TYPE, STRING, TYPED, AddressFact, HeapColumns
from ekiden_trace.state.core.walk import NotExpressible
from ekiden_trace.state.decode import is_char
from ekiden_trace.state.interior import moved_offset
from ekiden_trace.state.snapshot import (
    FunctionRef,
    GlobalRef,
    HeapObject,
    LiteralRef,
    Target,
    Unfollowed,
)


class Encoder(Protocol):
    """What the recipes share with state/encode.py's Encoder (which imports this module)."""

    old: Any  # the old Program (its hints)
    old_types: dict[int, TypeInfo]
    types: dict[int, TypeInfo]
    transformers: Any
    backend: Any

    def _info(self, tid: int | None) -> TypeInfo: ...
    def _struct_plan(self, info: TypeInfo) -> tuple[str, list[Any]]: ...
    def _pointee(self, pointer: TypeInfo, obj: HeapObject) -> int: ...
    def outside(self, addr: int, target: Target, path: str) -> int: ...


def integer_bounds(info: TypeInfo) -> tuple[int, int]:
    """The values an integer or enum type of v2 holds (its encoding says if signed)."""
    bits = 8 * (info.size or 0)
    if info.encoding in ("signed", "signed_char"):
        return -(1 << bits - 1), (1 << bits - 1) - 1
    return 0, (1 << bits) - 1


OP_COPY, OP_INT, OP_ENUM, OP_PTR, OP_F32 = range(5)
PTR_FUNCTION, PTR_UNTYPED = 1, 2
RECIPE_STRING, RECIPE_BUFFER = 0, 1
SPAN_GAP = 1024  # objects closer than this join one span (less than a page: see place.c)
_NO_NAME = -(1 << 63)  # an enum table's "this enumerator is not in v2"

Op = tuple[int, int, int, int, int]
"""(op, source offset, destination offset, arg, extra) over one element.  OP_COPY: arg
bytes.  OP_INT, OP_ENUM: arg = source size | signed << 8 | new size << 16 | signed << 24;
OP_ENUM's extra = its enum's first pair in the recipe's table << 32 | the pairs' count.
OP_PTR: arg = the pointer class (old, new pointer type), extra = PTR_ flags.  OP_F32: a
float read and written back as Python's struct does."""


class _Op(ctypes.Structure):
    _fields_ = [
        ("op", ctypes.c_int32),
        ("src", ctypes.c_int32),
        ("dst", ctypes.c_int32),
        ("arg", ctypes.c_int32),
        ("extra", ctypes.c_int64),
    ]


class _External(ctypes.Structure):
    _fields_ = [("pos", ctypes.c_uint64), ("value", ctypes.c_uint64), ("cls", ctypes.c_int64)]


_RESOLVE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int32, ctypes.c_int64, ctypes.c_int32)
_MOVED = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int32, ctypes.c_int64, ctypes.c_uint64)


_p, _u64, _i64, _i32 = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64, ctypes.c_int32
_SIGNATURES: Signatures = {
    "ek_place_open": (_p, [_u64, _p, _p, _p, _p, _p, _p, _RESOLVE, _MOVED]),
    "ek_place_close": (None, [_p]),
    "ek_place_recipe": (_i32, [_p, _i32, _p, _i32, ctypes.c_uint32, ctypes.c_uint32, _p, _i32]),
    "ek_place_build": (_i64, [_p, _p, _p, _u64]),
    "ek_place_error_object": (_i64, [_p]),
    "ek_place_sizes": (_p, [_p]),
    "ek_place_out_length": (_u64, [_p]),
    "ek_place_out": (_p, [_p]),
    "ek_place_externals": (_p, [_p, ctypes.POINTER(_u64)]),
    "ek_place_set_external": (None, [_p, _u64, _u64]),
    "ek_place_assign": (None, [_p, _p]),
    "ek_place_address": (_u64, [_p, _u64]),
    "ek_place_write": (_i64, [_p, _i32, _u64]),
    "ek_place_recipe_of": (_i32, [_p, _u64]),
    "ek_place_write_stats": (None, [_p, _p]),
}


def _sized(info: TypeInfo) -> int:
    size = info.size or 0
    if size not in (1, 2, 4, 8):
        raise NotExpressible(f"a {size}-byte integer")
    return size


class RecipeCompiler:
    """Byte recipes over one element, from v1's type to v2's, as the Encoder converts."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.old_types = encoder.old_types
        self.hints = encoder.old.hints
        self.classes: list[tuple[int, int]] = []  # (old, new) pointer types, by class
        self._class_of: dict[tuple[int, int], int] = {}
        self.table: list[int] = []  # the enum pairs of the recipe being compiled

    def old_name(self, tid: int) -> str:
        return c_name(self.old_types, tid)

    def compile(self, old_tid: int, new_tid: int) -> tuple[list[Op], list[int]]:
        """The operations of one element and the enum table they use (old, new pairs)."""
        self.table: list[int] = []
        ops: list[Op] = []
        self._ops(old_tid, new_tid, 0, 0, ops)
        return ops, self.table

    def _ops(self, old_tid: int | None, new_tid: int, src: int, dst: int, ops: list[Op]) -> None:
        old = get(self.old_types, strip(self.old_types, old_tid))
        new = self.encoder._info(new_tid)
        transformers = self.encoder.transformers
        if old.kind in ("struct", "union", "enum") and transformers.for_type(self.old_name(old.id)):
            raise NotExpressible(f"a transformer of {self.old_name(old.id)}")
        if old.kind in ("base", "enum") and new.kind in ("base", "enum"):
            self._scalar(old, new, src, dst, ops)
        elif old.kind == "pointer" and new.kind == "pointer":
            ops.append((OP_PTR, src, dst, self._class(old, new), self._pointer_flags(old)))
        elif old.kind == "struct" and new.kind == "struct":
            self._struct(old, new, src, dst, ops)
        elif old.kind == "union" and new.kind == "union":
            if holds_pointer(self.old_types, old.id):
                raise NotExpressible(f"{self.old_name(old.id)} holds a pointer")
            ops.append((OP_COPY, src, dst, min(old.size or 0, new.size or 0), 0))
        elif old.kind == "array" and new.kind == "array":
            self._array(old, new, src, dst, ops)
        else:
            raise NotExpressible(f"{old.kind} {self.old_name(old.id)} into a {new.kind}")

    def _scalar(self, old: TypeInfo, new: TypeInfo, src: int, dst: int, ops: list[Op]) -> None:
        if "float" in (old.encoding, new.encoding):
            if old.encoding != new.encoding or old.size != new.size or old.size not in (4, 8):
                raise NotExpressible("a float that changes")
            ops.append((OP_F32, src, dst, 4, 0) if old.size == 4 else (OP_COPY, src, dst, 8, 0))
            return
        src_size, dst_size = _sized(old), _sized(new)
        # As the Decoder reads them: an enum is signed only with the 'signed' encoding.
        if old.kind == "enum":
            src_signed = old.encoding == "signed"
        else:
            src_signed = old.encoding in ("signed", "signed_char")
        dst_signed = integer_bounds(new)[0] < 0
        arg = src_size | src_signed << 8 | dst_size << 16 | dst_signed << 24
        if old.kind == "enum" and new.kind == "enum":
            names: dict[int, str] = {}
            for name, number in old.enumerators.items():
                names.setdefault(number, name)
            first = len(self.table) // 2  # this enum's pairs in the recipe's table
            for number, name in names.items():
                self.table += (number, new.enumerators.get(name, _NO_NAME))
            ops.append((OP_ENUM, src, dst, arg, first << 32 | len(names)))
        else:
            ops.append((OP_INT, src, dst, arg, 0))

    def _struct(self, old: TypeInfo, new: TypeInfo, src: int, dst: int, ops: list[Op]) -> None:
        old_name = self.old_name(old.id)
        by_name = {m.name: m for m in old.members if m.name}
        for member, produce, source in self.encoder._struct_plan(new)[1]:
            if produce is not None:
                raise NotExpressible(f"a transformer of {member.name}")
            found = by_name.get(source)
            if found is None:
                continue  # a field v1 lacks stays zero
            if found.bit_size or member.bit_size:
                raise NotExpressible("a bit-field")
            if (old_name, source) in self.hints.unions:
                raise NotExpressible(f"the hinted union {old_name}.{source}")
            hint = self.hints.fields.get((old_name, source))
            at, to = src + found.offset, dst + member.offset
            pointer = get(self.old_types, strip(self.old_types, found.type))
            target = get(self.old_types, strip(self.old_types, pointer.target))
            opaque = hint is not None and hint.kind == "opaque" and target.kind != "function"
            if pointer.kind == "pointer" and opaque:
                if self.encoder._info(member.type).kind != "pointer":
                    raise NotExpressible("an opaque pointer into another kind")
                ops.append((OP_COPY, at, to, 8, 0))  # carried as its number
            elif (
                pointer.kind == "pointer"
                and hint is not None
                and self.encoder._info(member.type).kind == "pointer"
            ):
                new = self.encoder._info(member.type)
                ops.append(
                    (OP_PTR, at, to, self._class(pointer, new), self._pointer_flags(pointer, hint))
                )
            else:
                self._ops(found.type, member.type, at, to, ops)

    def _array(self, old: TypeInfo, new: TypeInfo, src: int, dst: int, ops: list[Op]) -> None:
        old_element = get(self.old_types, strip(self.old_types, old.target))
        new_element = self.encoder._info(new.target)
        new_size = new_element.size or 0
        if is_char(old_element):  # a CharArray: its bytes, cut to v2's length
            size = min(old.count or 0, (new.count or 0) * new_size)
            if size:
                ops.append((OP_COPY, src, dst, size, 0))
            return
        old_size = old_element.size or 0
        for i in range(min(old.count or 0, new.count or 0)):
            self._ops(old_element.id, new_element.id, src + i * old_size, dst + i * new_size, ops)

    def _pointer_flags(self, old: TypeInfo, hint: PointerHint | None = None) -> int:
        """PTR_FUNCTION: never into the heap (the capture names its symbol); PTR_UNTYPED:
        a void pointer that the capture follows only when it met its target first."""
        pointee = get(self.old_types, strip(self.old_types, old.target))
        if pointee.kind == "function":
            return PTR_FUNCTION
        typed_by_hint = hint is not None and hint.kind in ("buffer", "string", "points_to")
        return PTR_UNTYPED if pointee.kind == "void" and not typed_by_hint else 0

    def _class(self, old: TypeInfo, new: TypeInfo) -> int:
        key = (old.id, new.id)
        if key not in self._class_of:
            self._class_of[key] = len(self.classes)
            self.classes.append(key)
        return self._class_of[key]


def fact_target(fact: AddressFact | None, old_pointer: TypeInfo, old_types: dict) -> Target:
    """The target the reference capture gives a pointer outside the heap (decode.py)."""
    if fact is None:
        raise NotExpressible("a pointer the capture has no fact about")
    pointee = get(old_types, strip(old_types, old_pointer.target))
    if pointee.kind == "function":
        symbol = fact.symbol
        return FunctionRef(symbol[0] if symbol and symbol[1] == 0 else None)
    if fact.region == "code" and is_char(pointee) and fact.literal is not None:
        return LiteralRef(fact.literal)
    if fact.region in ("data", "code"):
        return GlobalRef(*fact.symbol) if fact.symbol else Unfollowed("data without a symbol")
    return Unfollowed(fact.region)


class Placer:
    """The compiled restore of one snapshot's heap into one new process."""

    def __init__(self, encoder: Encoder, heap: HeapColumns) -> None:
        self.lib = core_library()
        self.encoder = encoder
        self.heap = heap
        self.compiler = RecipeCompiler(encoder)
        self.timings: dict[str, float] = {}
        clock = time.perf_counter()
        self._recipes: dict[tuple[int, int], int] = {}  # (old tid, new tid) -> recipe id
        self._element: list[int] = [-1, -1]  # new element type by recipe id
        self._failure: BaseException | None = None
        self._resolve_cb = _RESOLVE(self._resolve)
        self._moved_cb = _MOVED(self._moved)
        columns = [heap.addr, heap.type_id, heap.count, heap.kind, heap.start]
        self._keep = columns  # place.c reads them in place
        pointers = [column.buffer_info()[0] for column in columns]
        self._data = ctypes.c_char_p(heap.data)  # heap.data's own bytes, not a copy
        self.ctx = self.lib.ek_place_open(
            len(heap), *pointers, self._data, self._resolve_cb, self._moved_cb
        )
        if not self.ctx:
            raise MemoryError("the compiled restore cannot allocate its index")
        self._register(RECIPE_STRING, [], 0, 0, [])
        self._register(RECIPE_BUFFER, [], 0, 0, [])
        self.timings["index"] = time.perf_counter() - clock

    def __del__(self) -> None:
        if getattr(self, "ctx", None):
            self.lib.ek_place_close(self.ctx)
            self.ctx = None

    def address(self, object_id: int) -> int:
        """The new address of object `object_id`, 0 when this placer did not place it."""
        return self.lib.ek_place_address(self.ctx, object_id - 1)

    def element(self, object_id: int) -> int | None:
        """The new element type of a placed object, None when this placer did not place it."""
        if not self.address(object_id):
            return None
        return self._element[self.lib.ek_place_recipe_of(self.ctx, object_id - 1)]

    # -- recipes -------------------------------------------------------------

    def recipe(self, old_tid: int, kind: int, new_tid: int) -> int:
        """The recipe id of an object of `kind` and old element `old_tid` made `new_tid`."""
        if kind == STRING:
            return RECIPE_STRING
        if kind != TYPED:
            return RECIPE_BUFFER
        key = (old_tid, new_tid)
        if key not in self._recipes:
            ops, table = self.compiler.compile(old_tid, new_tid)
            rid = len(self._element)
            old_size = get(self.encoder.old_types, strip(self.encoder.old_types, old_tid)).size
            new_size = self.encoder._info(new_tid).size
            self._register(rid, ops, old_size or 0, new_size or 0, table)
            self._recipes[key] = rid
            self._element.append(new_tid)
        return self._recipes[key]

    def _register(
        self, rid: int, ops: list[Op], old_size: int, new_size: int, table: list[int]
    ) -> None:
        packed = (_Op * max(len(ops), 1))(*ops)
        values = array("q", table)
        failed = self.lib.ek_place_recipe(
            self.ctx, rid, packed, len(ops), old_size, new_size,
            values.buffer_info()[0], len(table) // 2,
        )  # fmt: skip
        if failed:
            raise NotExpressible("place.c refused a recipe")

    def _type_name(self, old_tid: int) -> str:
        return "char" if old_tid == CHAR_TYPE else c_name(self.encoder.old_types, old_tid)

    def _resolve(self, cls: int, old_tid: int, kind: int) -> int:
        """Called from place.c: the recipe of an object first reached through class `cls`."""
        try:
            pointer = self.encoder._info(self.compiler.classes[cls][1])
            stand_in = HeapObject(0, 0, self._type_name(old_tid), 1, old_tid)
            return self.recipe(old_tid, kind, self.encoder._pointee(pointer, stand_in))
        except BaseException as why:  # it cannot cross into C
            self._failure = why
            return -1

    def _moved(self, rid: int, old_tid: int, offset: int) -> int:
        """Called from place.c: where an interior pointer lands in the new layout."""
        encoder = self.encoder
        try:
            element = self._element[rid]
            moved = moved_offset(encoder.old_types, old_tid, encoder.types, element, offset)
        except BaseException as why:  # it cannot cross into C
            self._failure = why
            return -1
        return moved if isinstance(moved, int) else -1

    # -- placing -------------------------------------------------------------

    def place(self, seeds: list[tuple[HeapObject, int]]) -> tuple[int, int]:
        """Allocate and write the objects reachable from (object, new element type) seeds
        that were not placed before; returns (objects, bytes) written.

        NotExpressible before anything is allocated or written: the caller then runs
        the Python path over the same seeds.  Any later failure raises.
        """
        clock = time.perf_counter()
        ids = array("I", [obj.id - 1 for obj, _ in seeds])
        rids = array("i", [self.recipe(o.type_id, self.heap.kind[o.id - 1], t) for o, t in seeds])
        self.timings["recipes"] = time.perf_counter() - clock
        reached = self.lib.ek_place_build(
            self.ctx, ids.buffer_info()[0], rids.buffer_info()[0], len(ids)
        )
        if reached < 0:
            failure, self._failure = self._failure, None
            if failure is not None and not isinstance(failure, Exception):
                raise failure  # an interrupt met in a callback is not a decline
            raise NotExpressible(f"place.c stopped ({reached}): {failure or 'see the reference'}")
        self._map_externals()
        self.timings["convert"] = time.perf_counter() - clock - self.timings["recipes"]
        if not reached:
            return 0, 0
        sizes = array("Q")
        sizes.frombytes(ctypes.string_at(self.lib.ek_place_sizes(self.ctx), 8 * reached))
        return self._allocate_and_write(sizes, reached)

    def _map_externals(self) -> None:
        """Map every pointer outside the heap as Encoder._pointer does: first every distinct
        (value, class), which may still decline; then each, a string literal getting a
        new string per pointer as in the Python path."""
        count = ctypes.c_uint64()
        where = self.lib.ek_place_externals(self.ctx, ctypes.byref(count))
        if not count.value:
            return
        externals = (_External * count.value).from_address(where)
        encoder = self.encoder
        targets: dict[tuple[int, int], tuple[Target, int]] = {}
        for external in externals:
            key = (external.value, external.cls)
            if key in targets:
                continue
            old_pointer = get(encoder.old_types, self.compiler.classes[external.cls][0])
            fact = self.heap.facts.get(external.value)
            target = fact_target(fact, old_pointer, encoder.old_types)
            new = 0
            if not isinstance(target, LiteralRef):
                try:
                    new = encoder.outside(external.value, target, "heap")
                except EkidenError as why:
                    raise NotExpressible(str(why)) from None
            targets[key] = (target, new)
        for i, external in enumerate(externals):
            target, new = targets[(external.value, external.cls)]
            if isinstance(target, LiteralRef):
                new = encoder.outside(external.value, target, "heap")
            self.lib.ek_place_set_external(self.ctx, i, new)

    def _allocate_and_write(self, sizes: array, reached: int) -> tuple[int, int]:
        clock = time.perf_counter()
        addresses = self.encoder.backend.malloc_many(sizes)
        new = addresses if isinstance(addresses, array) else array("Q", addresses)
        self.timings["malloc"] = time.perf_counter() - clock
        self.lib.ek_place_assign(self.ctx, new.buffer_info()[0])
        self.timings["relocate"] = time.perf_counter() - clock - self.timings["malloc"]
        clock = time.perf_counter()
        pid = self.encoder.backend.tracee.pid  # type: ignore[attr-defined]
        written = self.lib.ek_place_write(self.ctx, pid, SPAN_GAP if _alone(pid) else 0)
        self.timings["write"] = time.perf_counter() - clock
        stats = (ctypes.c_double * 4)()
        self.lib.ek_place_write_stats(self.ctx, stats)
        names = ("spans", "span reads", "overlay", "span writes")
        self.timings.update(zip(names, stats, strict=True))
        if written < 0:
            raise EkidenError(f"the heap could not be written into process {pid} ({written}).")
        return reached, sum(sizes)


def _alone(pid: int) -> bool:
    """Whether the process has a single thread (then, stopped, nothing else runs in it)."""
    try:
        return len(os.listdir(f"/proc/{pid}/task")) == 1
    except OSError:
        return False


def core_library() -> ctypes.CDLL:
    """The compiled core, its place.c functions declared; NotExpressible when it is off
    or cannot be built."""
    lib = core()
    if lib is None:
        raise NotExpressible("the compiled core is off")
    return declare(lib, _SIGNATURES)
