"""The compiled capture's Python side: recipes from v1's DWARF and hints, and walk.c's binding.

A recipe tells walk.c, per heap type, the size of one element and where its pointers
are: followed to another recipe (with a count from nothing, a constant or a sibling
integer field), read as a C string, or not followed (functions, opaque hints: their
values become facts, except opaque ones into the heap).  A shape no recipe can
express raises NotExpressible, and the whole capture then takes the reference path
(state/capture.py).
"""

from __future__ import annotations

import ctypes
from array import array
from dataclasses import dataclass, field, replace

from ekiden_trace.binary.dwarf.types import Member, TypeInfo, c_name, strip
from ekiden_trace.binary.hintexpr import HintExprError, Name, names
from ekiden_trace.binary.hints import Length, PointerHint
from ekiden_trace.binary.layouts import holds_pointer, member_key
from ekiden_trace.errors import EkidenError
from ekiden_trace.native.build import Signatures, declare
from ekiden_trace.state.columns import HeapColumns
from ekiden_trace.state.decode import Decoder, HeapPointer, is_char

FOLLOW, CSTRING, FUNCTION, UNTYPED, OPAQUE = 0, 1, 2, 3, 4
LEN_ONE, LEN_CONST, LEN_FIELD = 0, 1, 2
OK, DECLINED, LIMIT, NOMEM = 0, 1, 2, 3
INTEGER_ENCODINGS = ("signed", "unsigned", "signed_char", "unsigned_char", "bool")


class NotExpressible(Exception):
    """A shape of the state (or a type pair, or a value met while placing) that the
    compiled engine's recipes cannot express; the reason says which."""


class Slot(ctypes.Structure):
    _fields_ = [
        ("off", ctypes.c_uint64),
        ("stride", ctypes.c_uint64),
        ("repeat", ctypes.c_uint64),
        ("kind", ctypes.c_int32),
        ("target", ctypes.c_int32),
        ("len_kind", ctypes.c_int32),
        ("len_size", ctypes.c_int32),
        ("len_delta", ctypes.c_int64),
        ("len_signed", ctypes.c_int64),
        ("len_const", ctypes.c_uint64),
    ]


class Recipe(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint64),
        ("nslots", ctypes.c_uint64),
        ("slots", ctypes.POINTER(Slot)),
    ]


class Root(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint64), ("recipe", ctypes.c_int64), ("count", ctypes.c_uint64)]


@dataclass(frozen=True)
class SlotSpec:
    """Pointers at `off`, `off + stride`, ... (`repeat` of them) in one element."""

    off: int
    kind: int
    target: int = 0  # FOLLOW: a recipe; CSTRING: a string code (-1 - index of its char type)
    stride: int = 0
    repeat: int = 1
    len_kind: int = LEN_ONE
    len_const: int = 0
    len_delta: int = 0  # LEN_FIELD: the length field's offset minus the pointer's
    len_size: int = 0
    len_signed: bool = False


@dataclass
class Recipes:
    """The recipes of one capture, by index, and the C strings' char types by code."""

    type_ids: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    slots: list[list[SlotSpec]] = field(default_factory=list)
    char_types: list[int] = field(default_factory=list)

    def type_of(self, code: int) -> int:
        """The type id of a recipe (>= 0) or string code (< 0)."""
        return self.type_ids[code] if code >= 0 else self.char_types[-1 - code]


class RecipeCompiler:
    """Compiles recipes for the types the heap walk reaches, from a live Decoder's program
    (its hints and, for lengths held in globals, its memory)."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.types: dict[int, TypeInfo] = decoder.types
        self.hints = decoder.hints
        self.recipes = Recipes()
        self._index: dict[int, int] = {}

    def root(self, item: HeapPointer) -> tuple[int, int] | None:
        """A root's (recipe or string code, count), or None when it is not followed
        (an untyped pointer: the reference leaves it unfollowed too)."""
        hint = item.hint
        if hint is not None and hint.kind not in ("array", "opaque"):
            raise NotExpressible(f"a variable's {hint.kind} hint")
        pinfo = self.types.get(item.pointee)
        if pinfo is None or pinfo.kind == "void":
            return None
        if hint is None and is_char(pinfo):
            return self._string(item.pointee), 0
        return self.recipe(item.pointee), item.count if item.count is not None else 1

    def recipe(self, tid: int) -> int:
        """The recipe of heap elements of (stripped) type `tid`."""
        found = self._index.get(tid)
        if found is not None:
            return found
        info = self.types[tid]
        if not info.size:
            raise NotExpressible(f"`{c_name(self.types, tid)}` has no known size")
        index = self._index[tid] = len(self.recipes.type_ids)
        self.recipes.type_ids.append(tid)
        self.recipes.sizes.append(info.size)
        self.recipes.slots.append([])
        self.recipes.slots[index] = sorted(self._slots(tid), key=lambda s: s.off)
        return index

    def _string(self, char_type: int) -> int:
        if char_type not in self.recipes.char_types:
            self.recipes.char_types.append(char_type)
        return -1 - self.recipes.char_types.index(char_type)

    def _slots(
        self, tid: int | None, owner: TypeInfo | None = None, member: Member | None = None
    ) -> list[SlotSpec]:
        """The pointer slots of a value of type `tid`, at offsets from its start; `member`
        of `owner` is where the value is, for field hints and sibling lengths."""
        sid = strip(self.types, tid)
        info = self.types.get(sid)
        if info is None:
            return []
        if info.kind == "pointer":
            hint = None
            if owner is not None and member is not None:
                hint = self.hints.fields.get((c_name(self.types, owner.id), member.name or ""))
            return [self._pointer(info, hint, owner, member)]
        if info.kind == "struct":
            name = c_name(self.types, sid)
            slots: list[SlotSpec] = []
            for m in info.members:
                mtype = self.types.get(strip(self.types, m.type))
                if m.bit_size or mtype is None:
                    continue
                if mtype.kind == "union" and m.name and (name, m.name) in self.hints.unions:
                    raise NotExpressible(f"the union `{name}.{m.name}` chosen by a hint")
                slots += [replace(s, off=m.offset + s.off) for s in self._slots(m.type, info, m)]
            return slots
        if info.kind == "union":
            if holds_pointer(self.types, sid):
                raise NotExpressible(f"`{c_name(self.types, sid)}` holds a pointer in a union")
            return []
        if info.kind == "array":
            element = strip(self.types, info.target)
            einfo = self.types.get(element)
            if einfo is None or is_char(einfo) or not info.count:
                return []
            esize = einfo.size or 0
            slots = []
            for s in self._slots(element):
                if s.repeat == 1:
                    slots.append(replace(s, stride=esize, repeat=info.count))
                else:
                    slots += [replace(s, off=i * esize + s.off) for i in range(info.count)]
            return slots
        return []

    def _pointer(
        self,
        info: TypeInfo,
        hint: PointerHint | None,
        owner: TypeInfo | None,
        member: Member | None,
    ) -> SlotSpec:
        pointee = strip(self.types, info.target) if info.target in self.types else -1
        pinfo = self.types.get(pointee)
        if pinfo is not None and pinfo.kind == "function":
            return SlotSpec(0, FUNCTION)
        if hint is not None and hint.kind == "opaque":
            return SlotSpec(0, OPAQUE)
        if hint is not None and hint.kind != "array":
            raise NotExpressible(f"a {hint.kind} hint")
        if pinfo is None or pinfo.kind == "void":
            return SlotSpec(0, UNTYPED)
        if hint is None and is_char(pinfo):
            return SlotSpec(0, CSTRING, self._string(pointee))
        slot = SlotSpec(0, FOLLOW, self.recipe(pointee))
        if hint is None or hint.length is None:
            return slot
        return self._length(slot, hint.length, owner, member)

    def _length(
        self, slot: SlotSpec, length: Length, owner: TypeInfo | None, member: Member | None
    ) -> SlotSpec:
        """The slot with its count: a constant (globals evaluated now, since they do not
        change while the process is stopped) or a plain sibling integer field."""
        members = {member_key(m, i): m for i, m in enumerate(owner.members)} if owner else {}
        read = names(length.expr)
        if not any(path[0] in members for path in read):
            try:
                count = self.decoder.length(length, None)
            except (EkidenError, HintExprError) as why:
                raise NotExpressible(f"the length `{length.text}`: {why}") from None
            return replace(slot, len_kind=LEN_CONST, len_const=count)
        path = length.expr.path if isinstance(length.expr, Name) else ()
        if len(path) != 1 or length.paths.get(path) or member is None:
            raise NotExpressible(f"the length `{length.text}` is more than a sibling field")
        field_ = members[path[0]]
        finfo = self.types.get(strip(self.types, field_.type))
        if (
            field_.bit_size
            or finfo is None
            or finfo.kind not in ("base", "enum")
            or finfo.encoding not in INTEGER_ENCODINGS
            or finfo.size not in (1, 2, 4, 8)
        ):
            raise NotExpressible(f"the length `{length.text}` is not a plain integer field")
        return replace(
            slot,
            len_kind=LEN_FIELD,
            len_delta=field_.offset - member.offset,
            len_size=finfo.size or 0,
            len_signed=finfo.encoding in ("signed", "signed_char"),
        )


@dataclass
class Walked:
    """A whole walk: the columns (without facts) and each root's (object index, offset)."""

    columns: HeapColumns
    roots: list[tuple[int, int]]
    outside: array  # the distinct pointer values found in objects and not followed
    syscalls: int


class Declined(Exception):
    """The walk met a shape where it cannot promise the reference's graph; `limit` when a
    capture limit was crossed (the reference then says so)."""

    def __init__(self, reason: str, limit: bool) -> None:
        super().__init__(reason)
        self.limit = limit


_U64 = ctypes.POINTER(ctypes.c_uint64)
_U32 = ctypes.POINTER(ctypes.c_uint32)
_I64 = ctypes.POINTER(ctypes.c_int64)


_HANDLE = (ctypes.c_void_p,)
_SIGNATURES: Signatures = {
    "ek_walk_run": (ctypes.c_void_p, (
        ctypes.c_int, ctypes.POINTER(Recipe), _U64, ctypes.c_uint64, ctypes.POINTER(Root),
        ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64,
    )),
    "ek_walk_status": (ctypes.c_int, _HANDLE),
    "ek_walk_reason": (ctypes.c_char_p, _HANDLE),
    "ek_walk_objects": (ctypes.c_uint64, _HANDLE),
    "ek_walk_slots": (ctypes.c_uint64, _HANDLE),
    "ek_walk_outside": (ctypes.c_uint64, _HANDLE),
    "ek_walk_syscalls": (ctypes.c_uint64, _HANDLE),
    "ek_walk_free": (None, _HANDLE),
    "ek_walk_object_columns": (None, (
        ctypes.c_void_p, _I64, _I64, _U64, _I64, _U64, ctypes.POINTER(ctypes.c_uint8), _U64,
    )),
    "ek_walk_data": (None, (ctypes.c_void_p, ctypes.c_void_p)),
    "ek_walk_slot_columns": (None, (ctypes.c_void_p, _U32, _U32, _U32, _U32)),
    "ek_walk_roots": (None, (ctypes.c_void_p, _U64, _U64)),
    "ek_walk_outside_values": (None, (ctypes.c_void_p, _U64)),
}  # fmt: skip


def _zeros(code: str, n: int) -> array:
    return array(code, [0]) * n  # repeated in place: no temporary bytes of the same size


def _ptr(column: array, kind: type) -> ctypes._Pointer:
    return ctypes.cast(column.buffer_info()[0], ctypes.POINTER(kind))


_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)


def walk(
    lib: ctypes.CDLL,
    pid: int,
    recipes: Recipes,
    heap: list[tuple[int, int]],
    roots: list[tuple[int, int, int]],
    limits: tuple[int, int, int],
) -> Walked:
    """Walk the stopped process `pid` from `roots` (address, recipe or string code, count)
    within the `heap` ranges; `limits` are (objects, bytes, string length).  Declined
    when it cannot promise the reference's graph."""
    if not roots:  # nothing points into the heap: nothing to set up in C
        return Walked(HeapColumns(), [], array("Q"), 0)
    declare(lib, _SIGNATURES)
    keep = []
    table = (Recipe * max(len(recipes.sizes), 1))()
    for i, (size, slots) in enumerate(zip(recipes.sizes, recipes.slots, strict=True)):
        cslots = (Slot * max(len(slots), 1))(
            *(
                Slot(s.off, s.stride, s.repeat, s.kind, s.target, s.len_kind, s.len_size,
                     s.len_delta, int(s.len_signed), s.len_const)
                for s in slots
            )
        )  # fmt: skip
        keep.append(cslots)
        table[i] = Recipe(size, len(slots), cslots)
    ranges = array("Q", [bound for span in sorted(heap) for bound in span] or [0])
    croots = (Root * max(len(roots), 1))(*(Root(*root) for root in roots))
    handle = lib.ek_walk_run(
        pid, table, _ptr(ranges, ctypes.c_uint64), len(heap), croots, len(roots), *limits
    )
    if not handle:
        raise Declined("out of memory", limit=False)
    try:
        status = lib.ek_walk_status(handle)
        if status != OK:
            raise Declined(lib.ek_walk_reason(handle).decode(), status == LIMIT)
        n, nslots = lib.ek_walk_objects(handle), lib.ek_walk_slots(handle)
        columns = HeapColumns(
            addr=_zeros("Q", n),
            type_id=_zeros("q", n),
            count=_zeros("Q", n),
            kind=_zeros("B", n),
            start=_zeros("Q", n + 1),
            slot_obj=_zeros("I", nslots),
            slot_off=_zeros("I", nslots),
            target_obj=_zeros("I", nslots),
            target_off=_zeros("I", nslots),
        )
        recipe_types = array("q", recipes.type_ids or [0])
        string_types = array("q", recipes.char_types or [0])
        lib.ek_walk_object_columns(
            handle,
            _ptr(recipe_types, ctypes.c_int64),
            _ptr(string_types, ctypes.c_int64),
            _ptr(columns.addr, ctypes.c_uint64),
            _ptr(columns.type_id, ctypes.c_int64),
            _ptr(columns.count, ctypes.c_uint64),
            _ptr(columns.kind, ctypes.c_uint8),
            _ptr(columns.start, ctypes.c_uint64),
        )
        # A fresh bytes object filled in place before anything else can see it, as C
        # extensions do with PyBytes_FromStringAndSize(NULL, n): no second copy of the heap.
        data = _new_bytes(None, columns.start[n])
        lib.ek_walk_data(handle, ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p))
        columns.data = data
        lib.ek_walk_slot_columns(
            handle,
            *(_ptr(c, ctypes.c_uint32) for c in (columns.slot_obj, columns.slot_off)),
            *(_ptr(c, ctypes.c_uint32) for c in (columns.target_obj, columns.target_off)),
        )
        root_obj, root_off = _zeros("Q", len(roots)), _zeros("Q", len(roots))
        lib.ek_walk_roots(handle, _ptr(root_obj, ctypes.c_uint64), _ptr(root_off, ctypes.c_uint64))
        outside = _zeros("Q", lib.ek_walk_outside(handle))
        lib.ek_walk_outside_values(handle, _ptr(outside, ctypes.c_uint64))
        syscalls = lib.ek_walk_syscalls(handle)
    finally:
        lib.ek_walk_free(handle)
    return Walked(columns, list(zip(root_obj, root_off, strict=True)), outside, syscalls)
