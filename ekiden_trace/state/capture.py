"""Read the tagged state of a stopped process into a Snapshot.

Each tagged variable is located (locate.py) and decoded (decode.py); the heap
it reaches is then walked breadth-first: every level's new objects are read in
one batch and decoded, which queues the next level's pointers. An object is
read once, however many pointers reach it, at its start or inside it.

Pointers may reach a place inside an object before the object itself (a tag
pointing at `ranges[2]` met before the tag `ranges`).  Whatever the order, an
object that encloses objects captured before takes them in: they vanish and
the pointers to them point inside it, so v2 gets one array, not overlapping
copies.

That Python walk is the reference.  When the compiled core is available, the heap
is walked by it instead (state/core/walk.py), from the same roots, into columns
decoded lazily (lazy.py); when the recipes cannot express the state or the walk
declines a shape, the whole capture runs the reference walk from scratch.
`Snapshot.engine` says which ran and why.
"""

from __future__ import annotations

import ctypes
from collections import deque

from ekiden_trace.binary.program import TaggedVariable
from ekiden_trace.errors import EkidenError
from ekiden_trace.native.build import core, why_not
from ekiden_trace.state.columns import CHAR_TYPE, STRING, AddressFact, HeapColumns
from ekiden_trace.state.core.walk import Declined, NotExpressible, RecipeCompiler, walk
from ekiden_trace.state.decode import MAX_STRING, Decoder, HeapPointer, is_char
from ekiden_trace.state.lazy import HeapObjects
from ekiden_trace.state.locate import Absent, locate
from ekiden_trace.state.snapshot import (
    ArrayValue,
    CapturedVariable,
    EnumValue,
    HeapObject,
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
from ekiden_trace.target.unwind import Frames

MAX_OBJECTS = 5_000_000
MAX_BYTES = 2 << 30
PAGE = 1 << 12
LINE_SHIFT = 8  # heap objects are indexed by the 256-byte lines they span
STRING_PROBE = 256  # a string's first read: this many bytes, or up to its page's end


class CaptureLimit(EkidenError):
    """The state graph is larger than the tool is willing to read."""


class Capturer:
    """One capture of one stopped process."""

    def __init__(self, live: LiveProcess, python_because: str | None = None) -> None:
        """`python_because`: run the reference walk, for this reason."""
        assert live.tracee is not None, "capture needs a stopped tracee"
        self.python_because = python_because
        self.live = live
        self.tracee = live.tracee
        self.program = live.program
        self.types = live.program.index.types
        self.objects: dict[int, HeapObject] = {}
        # Objects by start address, and by the lines they span, so that a pointer to
        # an object or into one is found in O(1).
        self._by_start: dict[int, int] = {}
        self._by_line: dict[int, list[int]] = {}
        self._extents: dict[int, int] = {}
        self._next_id = 1
        self._enclosed: dict[int, tuple[int, int]] = {}  # id -> (enclosing id, offset in it)
        self._queue: deque[HeapPointer] = deque()
        self._strings: list[tuple[Pointer, int]] = []  # (pointer, char type) of this level
        self.decoder = Decoder(live, self._read, self._queue.append)
        self.bytes_read = 0

    def capture(self, stop: StopLocation, frames: Frames) -> Snapshot:
        """Capture every tagged variable and the heap it reaches."""
        variables = [self._variable(tag, frames) for tag in self.program.tags]
        for var in variables:
            if isinstance(var.value, int | EnumValue):
                self.decoder.globals.setdefault(var.name, var.value)
        why = self.python_because
        library = core() if why is None else None
        if why is None and library is None:
            why = why_not()
        if library is not None:
            try:
                columns = self._walk_compiled(library)
            except NotExpressible as reason:
                why = f"not expressible: {reason}"
            except Declined as reason:
                why = f"declined: {reason}"
            else:
                return self._snapshot(
                    stop, variables, HeapObjects(columns, self.program), columns, "compiled"
                )
            # The variables' pointers may hold targets of the compiled walk: start afresh.
            return Capturer(self.live, why).capture(stop, frames)
        self._follow_all()
        if self._enclosed:
            self._point_into_enclosing(variables)
        return self._snapshot(stop, variables, self.objects, None, f"python: {why}")

    def _snapshot(
        self,
        stop: StopLocation,
        variables: list[CapturedVariable],
        objects: HeapObjects | dict[int, HeapObject],
        columns: HeapColumns | None,
        engine: str,
    ) -> Snapshot:
        return Snapshot(
            pid=self.tracee.pid,
            binary=self.program.name,
            build_id=self.program.build_id,
            stop=stop,
            variables=variables,
            objects=objects,
            bytes_read=self.bytes_read,
            heap=columns,
            engine=engine,
        )

    def _variable(self, tag: TaggedVariable, frames: Frames) -> CapturedVariable:
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
        where = locate(self.live, tag, frames)
        if isinstance(where, Absent):
            captured.absent, captured.lost = where.reason, where.lost
            return captured
        if isinstance(where, int):
            captured.address = where
            data = self._read(where, tag.size or 0)
        else:
            data = where
        hint = self.program.hints.variables.get(var.name)
        captured.value = self.decoder.decode(var.type, data, 0, hint)
        return captured

    # -- the compiled walk -------------------------------------------------

    def _walk_compiled(self, library: ctypes.CDLL) -> HeapColumns:
        """Walk the heap from the queued roots with the compiled core; NotExpressible or
        Declined when it cannot promise the reference's graph."""
        compiler = RecipeCompiler(self.decoder)
        roots: list[tuple[int, int, int]] = []
        pointers: list[Pointer] = []
        for item in self._queue:
            root = compiler.root(item)
            if root is None:
                item.pointer.target = Unfollowed("untyped")
            else:
                roots.append((item.pointer.addr, *root))
                pointers.append(item.pointer)
        self._queue.clear()
        # Larger objects first, strings last: a root into an object another root spans
        # then lands inside it, as the reference's take-in makes it whatever the order.
        order = sorted(
            range(len(roots)),
            key=lambda i: (
                -compiler.recipes.sizes[roots[i][1]] * roots[i][2] if roots[i][1] >= 0 else 1
            ),
        )
        roots = [roots[i] for i in order]
        pointers = [pointers[i] for i in order]
        live = self.live
        heap = [(m.start, m.end) for m in live.maps if live.region(m.start) == "heap"]
        limits = (MAX_OBJECTS, max(MAX_BYTES - self.bytes_read, 0), MAX_STRING)
        walked = walk(library, self.tracee.pid, compiler.recipes, heap, roots, limits)
        for pointer, (index, offset) in zip(pointers, walked.roots, strict=True):
            pointer.target = ObjectRef(index + 1, offset)
        columns = walked.columns
        columns.heap = heap
        columns.facts = {value: self._fact(value) for value in walked.outside}
        columns.globals = {
            name: value.value if isinstance(value, EnumValue) else value
            for name, value in self.decoder.globals.items()
        }
        self.bytes_read += len(columns.data) + columns.kind.count(STRING)
        return columns

    def _fact(self, addr: int) -> AddressFact:
        """What v1 says about an address outside the heap that an object points to."""
        region = self.live.region(addr)
        symbol = self.live.symbol_at(addr) if region != "heap" else None
        literal = None
        if region == "code":
            try:
                literal = self.tracee.read_cstring(addr, MAX_STRING)
            except MemoryAccessError:
                literal = None
        return AddressFact(region, symbol, literal)

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

    # -- the heap walk -----------------------------------------------------

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

    def _resolve(self, item: HeapPointer) -> tuple[HeapObject, int] | None:
        """Set the pointer's target; return a new heap object to read with its element type."""
        pointer, addr, hint, pointee = item.pointer, item.pointer.addr, item.hint, item.pointee
        if hint is not None and hint.kind == "points_to" and hint.target:
            hinted = self.program.index.type_by_name(hint.target)
            if hinted is None:
                raise EkidenError(
                    f"the hint type `{hint.target}` is not known to the debug info; fix the hint."
                )
            pointee = self.decoder.strip(hinted)
        wanted = self._extent_of(item, pointee)
        existing = self._object_at(addr)
        if existing is not None:
            obj, offset = existing
            # Reached before at its start with a smaller extent (a pointer to ranges[0] met
            # before ranges): the larger object is made below and takes it in.
            if offset or wanted is None or wanted <= self._extents[obj.id]:
                pointer.target = ObjectRef(obj.id, offset)
                return None
        if hint is not None and hint.kind in ("buffer", "string"):
            data = self._read(addr, item.count or 0)
            obj = self._new_object(addr, CHAR_TYPE, len(data), max(len(data), 1))
            obj.string, obj.is_buffer, obj.shown = data, True, item.shown
            pointer.target = ObjectRef(obj.id)
            return None
        pinfo = self.types.get(pointee)
        if pinfo is None or pinfo.kind == "void":
            pointer.target = Unfollowed("untyped")
            return None
        if hint is None and is_char(pinfo):
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
        name = "char" if type_id == CHAR_TYPE else self.decoder.type_name(type_id)
        oid = self._next_id
        self._next_id += 1
        obj = self.objects[oid] = HeapObject(oid, addr, name, count, type_id)
        extent = self._extents[oid] = max(extent, 1)
        enclosed = set()
        by_line = self._by_line
        for line in range(addr >> LINE_SHIFT, (addr + extent - 1 >> LINE_SHIFT) + 1):
            if line in by_line:
                enclosed.update(by_line[line])
                by_line[line].append(oid)
            else:
                by_line[line] = [oid]
        for inner in enclosed:
            start = self.objects[inner].addr
            if addr <= start and start + self._extents[inner] <= addr + extent:
                self._take_in(inner, obj)
        self._by_start[addr] = oid
        return obj

    def _extent_of(self, item: HeapPointer, pointee: int) -> int | None:
        """The bytes a pointer's object spans, when its type or hint tells."""
        if item.hint is not None and item.hint.kind in ("buffer", "string"):
            return item.count or 0
        info = self.types.get(pointee)
        if info is None or info.kind == "void" or (item.hint is None and is_char(info)):
            return None
        return (info.size or 0) * (item.count if item.count is not None else 1)

    def _take_in(self, inner: int, outer: HeapObject) -> None:
        """Object `inner`, captured before, lies inside `outer`: it becomes a place in it."""
        obj = self.objects.pop(inner)
        extent = self._extents.pop(inner)
        if self._by_start.get(obj.addr) == inner:
            del self._by_start[obj.addr]
        for line in range(obj.addr >> LINE_SHIFT, (obj.addr + extent - 1 >> LINE_SHIFT) + 1):
            self._by_line[line].remove(inner)
        self._enclosed[inner] = (outer.id, obj.addr - outer.addr)

    def _point_into_enclosing(self, variables: list[CapturedVariable]) -> None:
        """Pointers set to objects that were taken in later point inside their encloser."""

        def enclosing(ref: ObjectRef) -> ObjectRef:
            oid, offset = ref.object_id, ref.offset
            while oid in self._enclosed:
                oid, delta = self._enclosed[oid]
                offset += delta
            return ObjectRef(oid, offset)

        stack: list[Value | None] = [v.value for v in variables]
        stack += [obj.value for obj in self.objects.values()]
        while stack:
            item = stack.pop()
            if isinstance(item, Pointer):
                if isinstance(item.target, ObjectRef) and item.target.object_id in self._enclosed:
                    item.target = enclosing(item.target)
            elif isinstance(item, StructValue):
                stack += item.fields.values()
            elif isinstance(item, UnionValue):
                stack += item.members.values()
            elif isinstance(item, ArrayValue):
                stack += item.items

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
        """Read a level's new objects in one batch and decode them (queuing the next level)."""
        reads = [read for read in reads if read[0].id in self.objects]  # not taken in since
        if not reads:
            return
        sizes = [self._extents[obj.id] for obj, _ in reads]
        self._account(sum(sizes))
        spans = [(obj.addr, size) for (obj, _), size in zip(reads, sizes, strict=True)]
        try:
            blobs: list[bytes | None] = list(self.tracee.read_many(spans))
        except OSError:
            blobs = [self._read_or_none(addr, size) for addr, size in spans]
        decode = self.decoder.decode
        for (obj, element), size, blob in zip(reads, sizes, blobs, strict=True):
            if blob is None:
                obj.value = None
                continue
            esize = size // obj.count if obj.count else 0
            if obj.count == 1:
                obj.value = decode(element, blob, 0)
            else:
                obj.value = ArrayValue([decode(element, blob, i * esize) for i in range(obj.count)])

    def _read_or_none(self, addr: int, size: int) -> bytes | None:
        try:
            return self.tracee.read(addr, size)
        except OSError:
            return None
