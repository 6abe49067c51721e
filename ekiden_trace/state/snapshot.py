"""A version-neutral snapshot of tagged state: a typed value graph with object identity.

Values are plain Python objects: ints and floats for scalars, and the classes
below for everything with structure.  Heap objects are held once in
`Snapshot.objects`; pointers refer to them by id, so sharing and cycles are
kept exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ekiden_trace.state.columns import HeapColumns


class _Compact:
    """Pickles as (class, field values): the snapshot is handed to the guardian during
    the pause, and the default for slotted classes is several times slower."""

    __slots__ = ()

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return type(self), tuple(getattr(self, name) for name in self.__slots__)


@dataclass(slots=True)
class EnumValue(_Compact):
    """An enum value, with its enumerator name when the value has one."""

    name: str | None
    value: int
    type_name: str = ""


@dataclass(slots=True)
class StructValue(_Compact):
    """A struct: its C type name and its fields in declaration order."""

    type_name: str
    fields: dict[str, Value]


@dataclass(slots=True)
class UnionValue(_Compact):
    """A union: its raw bytes, the active member when a hint tells, and readable members."""

    type_name: str
    raw: bytes
    active: str | None
    members: dict[str, Value]
    unexplained: bool = False  # no active member, and a member holds a pointer


@dataclass(slots=True)
class ArrayValue(_Compact):
    """A fixed or hinted array."""

    items: list[Value]


@dataclass(slots=True)
class CharArray(_Compact):
    """A char array, kept as its exact bytes."""

    raw: bytes

    @property
    def text(self) -> bytes:
        return self.raw.split(b"\0", 1)[0]


@dataclass(slots=True)
class Pointer(_Compact):
    """A pointer value; `target` says where it points once capture has followed it."""

    addr: int
    target: Target | None = None


@dataclass(frozen=True, slots=True)
class ObjectRef(_Compact):
    """Points into a heap object of the snapshot."""

    object_id: int
    offset: int = 0


@dataclass(frozen=True, slots=True)
class FunctionRef(_Compact):
    """Points to a function, named by its symbol."""

    symbol: str | None


@dataclass(frozen=True, slots=True)
class GlobalRef(_Compact):
    """Points into a global or static object of the program, named by its symbol."""

    symbol: str
    offset: int


@dataclass(frozen=True, slots=True)
class LiteralRef(_Compact):
    """Points to read-only data such as a string literal; the bytes are carried."""

    text: bytes


@dataclass(frozen=True, slots=True)
class Unfollowed(_Compact):
    """A pointer left as a number, with the reason ('opaque', 'untyped', 'stack', ...)."""

    reason: str


NEW_ADDRESS = "new version's address"
"""The reason of a pointer read from the new version (`ctx.current`): carried as it is."""
CARRIED = frozenset({"opaque", NEW_ADDRESS})
"""Unfollowed pointers whose address is written unchanged."""

Target = ObjectRef | FunctionRef | GlobalRef | LiteralRef | Unfollowed | None
Value = int | float | EnumValue | StructValue | UnionValue | ArrayValue | CharArray | Pointer


@dataclass(slots=True)
class HeapObject(_Compact):
    """One heap object: `count` elements of `type_name`, or a string when `string` is set."""

    id: int
    addr: int
    type_name: str
    count: int
    type_id: int  # the element type in the captured program's DWARF
    value: Value | None = None
    string: bytes | None = None
    is_buffer: bool = False  # `string` holds a hinted buffer's exact bytes, no NUL added
    shown: int | None = None  # a string with capacity: its text is string[:shown]

    @property
    def text(self) -> bytes | None:
        """The text of a string or a string with capacity (None for anything else)."""
        if self.string is None or (self.is_buffer and self.shown is None):
            return None
        return self.string[: self.shown] if self.shown is not None else self.string

    @property
    def is_array(self) -> bool:
        return isinstance(self.value, ArrayValue) and self.count != 1


@dataclass(slots=True)
class CapturedVariable(_Compact):
    """A tagged variable and its value at the moment of capture."""

    name: str
    key: str
    scope: str
    scope_text: str
    function: str | None
    file: str
    c_type: str
    declaration: str  # the C declaration, e.g. "int client_fds[64]"
    address: int | None
    value: Value | None
    absent: str | None = None  # why there is no value (e.g. its function is not active)
    lost: bool = False  # it exists in the process but could not be read


@dataclass(slots=True)
class StopLocation(_Compact):
    """Where the process stood: an update point, or anywhere (--now)."""

    point: str | None
    pc: int
    function: str | None
    file: str | None
    line: int | None
    frames: list[str] = field(default_factory=list)
    code: list[str] = field(default_factory=list)  # instructions around pc, for --now


@dataclass(slots=True)
class Snapshot(_Compact):
    """The tagged state of one process."""

    pid: int
    binary: str
    build_id: str
    stop: StopLocation
    variables: list[CapturedVariable]
    # By id; a compiled capture's decode on first access (lazy.py), a reference one's are
    # a dict of HeapObjects.
    objects: Mapping[int, HeapObject]
    bytes_read: int = 0
    heap: HeapColumns | None = None  # the heap as the compiled core captured it (columns.py)
    engine: str = "python"  # "compiled", or "python: <why the compiled walk did not run>"
