"""The heap of a snapshot as columns: what the compiled core captures and restores.

One row per heap object and one per pointer between heap objects, in flat arrays,
instead of a Python object per value (~530 bytes each).  Object `i` of the columns
is the snapshot's object id `i + 1`.  Values (`HeapObject`) are decoded from these
bytes only when something asks for them (views, inspect, transformers, checks that
found something), with the same Decoder as the reference capture.

Invariants the producer guarantees:

* objects do not overlap; `start` has n + 1 entries and object i's bytes are
  `data[start[i]:start[i + 1]]`;
* a TYPED object holds `count` elements of `type_id` (v1's DWARF, stripped): its bytes
  are `size(type_id) * count` long;
* a STRING holds a C string's text without its NUL (its extent in memory is one more);
  a BUFFER holds a hinted buffer's exact bytes (`type_id` is CHAR_TYPE);
* the slot rows are sorted by (slot_obj, slot_off): the pointer stored at byte
  `slot_off` of object `slot_obj` points `target_off` bytes into object `target_obj`;
  every non-null pointer inside a TYPED object that points into the heap has a row;
* `facts` holds, for every other non-null pointer value stored inside an object
  (functions, globals, string literals, the stack, unmapped memory), what the
  capture learnt about that address while v1 still ran: see AddressFact.  Pointers
  that are not followed by their type or hint (function pointers, opaque hints) have
  no slot row wherever they point; their facts say what they point to (opaque
  pointers into the heap have none: they are carried as numbers).
* `heap` holds the address ranges that were the heap (what `region()` called 'heap'),
  and `globals` the integer variables that hint lengths read, as they were: with the
  facts, they let a Decoder decode any captured bytes without the process (lazy.py).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

TYPED, STRING, BUFFER = 0, 1, 2
CHAR_TYPE = -2  # the element type of a hinted buffer: plain bytes


@dataclass(frozen=True, slots=True)
class AddressFact:
    """What an address outside the heap was, in v1: its region ('code', 'data', 'stack',
    'unmapped', ...), the symbol covering it with the offset into it, and for 'code'
    the C string found there (a string literal), read at most MAX_STRING bytes."""

    region: str
    symbol: tuple[str, int] | None
    literal: bytes | None = None


@dataclass(slots=True)
class HeapColumns:
    """A snapshot's heap objects and the pointers between them (see the module doc)."""

    addr: array = field(default_factory=lambda: array("Q"))
    type_id: array = field(default_factory=lambda: array("q"))
    count: array = field(default_factory=lambda: array("Q"))
    kind: array = field(default_factory=lambda: array("B"))
    start: array = field(default_factory=lambda: array("Q", [0]))
    data: bytes = b""
    slot_obj: array = field(default_factory=lambda: array("I"))
    slot_off: array = field(default_factory=lambda: array("I"))
    target_obj: array = field(default_factory=lambda: array("I"))
    target_off: array = field(default_factory=lambda: array("I"))
    facts: dict[int, AddressFact] = field(default_factory=dict)
    heap: list[tuple[int, int]] = field(default_factory=list)
    globals: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.addr)

    def bytes_of(self, index: int) -> bytes:
        """Object `index`'s bytes (a string's without its NUL)."""
        return self.data[self.start[index] : self.start[index + 1]]
