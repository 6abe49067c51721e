"""What a transformer sees: `View`/`wrap` over old values, and `Context` (state/views.py).

The values are kvstore v1's state as capture shapes it (tests/unit/kvstate.py);
each test reads it the way fixtures/kvstore/xform_*.py do.
"""

from __future__ import annotations

from typing import Any

import pytest
from kvstate import KEYS, NBUCKETS, kvstore_v1_snapshot

from ekiden_trace.state.snapshot import (
    CharArray,
    EnumValue,
    FunctionRef,
    HeapObject,
    ObjectRef,
    Pointer,
    Snapshot,
    StructValue,
)
from ekiden_trace.state.views import Context, New, View, wrap


@pytest.fixture
def snapshot() -> Snapshot:
    return kvstore_v1_snapshot()


def old(snapshot: Snapshot, name: str) -> Any:
    """The view of an old variable, as a variable transformer receives it."""
    var = next(v for v in snapshot.variables if v.name == name)
    return View(var.value, snapshot, var.c_type)


def test_struct_fields_as_attributes_and_items(snapshot: Snapshot) -> None:
    config = old(snapshot, "config")
    assert config.limits.max_clients == 64
    assert config["limits"]["max_value_len"] == 1024
    assert config.histogram[0] == 2
    assert list(config.histogram) == [2, 0, 0, 0, 0, 0, 0, 0]
    assert len(config.histogram) == 8


def test_enums_are_their_enumerator_names(snapshot: Snapshot) -> None:
    config = old(snapshot, "config")
    assert config.mode == "MODE_READONLY"
    assert config.kind == "ENDPOINT_TCP"
    assert wrap(EnumValue(None, 42, "enum command"), snapshot) == 42  # no enumerator: the number


def test_union_members_by_name(snapshot: Snapshot) -> None:
    endpoint = old(snapshot, "config").endpoint
    assert endpoint.port == 7000
    with pytest.raises(AttributeError):
        _ = endpoint.path  # not captured: the hint says port is the active member


def test_pointer_fields_are_followed_like_arrows(snapshot: Snapshot) -> None:
    table = old(snapshot, "table")
    assert table.nbuckets == NBUCKETS and table.count == len(KEYS)
    buckets = table.buckets  # struct entry ** with an array hint: 64 pointers
    assert len(buckets) == NBUCKETS
    found = {}
    for head in buckets:
        entry = head
        while entry:
            found[entry.key.text] = str(entry.value)
            entry = entry.next
    assert found == {key: value for key, (value, _) in KEYS.items()}


def test_deref_gives_the_heap_object_and_none_for_null(snapshot: Snapshot) -> None:
    table = old(snapshot, "table")
    target = table.deref()
    assert isinstance(target, View) and target.type_name == "struct table"
    assert target.nbuckets == NBUCKETS
    empty = table.buckets[0]
    assert not empty and empty.deref() is None
    alpha = table.buckets[KEYS["alpha"][1]]
    assert alpha and alpha.deref().type_name == "struct entry"
    assert not alpha.next


def test_function_pointer_is_a_view_of_its_symbol(snapshot: Snapshot) -> None:
    hash_fn = old(snapshot, "table").hash
    assert hash_fn and hash_fn.deref() is None
    assert isinstance(hash_fn.raw, Pointer) and hash_fn.raw.target == FunctionRef("djb2")


def test_char_arrays_have_text_and_exact_bytes(snapshot: Snapshot) -> None:
    inbuf = old(snapshot, "inbufs")[0]
    assert inbuf.len == 3
    assert inbuf.data.text == "GET" and str(inbuf.data) == "GET"
    assert inbuf.data.bytes == b"GET" + bytes(2045)  # the whole char[2048]
    assert old(snapshot, "inbufs")[1].data.text == ""


def test_heap_string_text_and_hinted_buffer_bytes(snapshot: Snapshot) -> None:
    snapshot.objects[99] = HeapObject(
        99, 0x9900, "char", 4, -1, string=b"\x00\x01ab", is_buffer=True
    )
    buffer = wrap(Pointer(0x9900, ObjectRef(99)), snapshot)
    assert buffer.bytes == b"\x00\x01ab"  # a hinted buffer: its exact bytes, NULs included
    key = old(snapshot, "table").buckets[KEYS["alpha"][1]].key
    assert key.text == "alpha"


def test_heap_string_bytes_leave_out_the_nul(snapshot: Snapshot) -> None:
    key = old(snapshot, "table").buckets[KEYS["alpha"][1]].key
    assert key.bytes == b"alpha"


def test_scalars_come_as_python_values(snapshot: Snapshot) -> None:
    assert wrap(7, snapshot) == 7
    assert wrap(2.5, snapshot) == 2.5
    assert isinstance(wrap(CharArray(b"x\0"), snapshot), View)


def test_misuse_raises_clear_errors(snapshot: Snapshot) -> None:
    table = old(snapshot, "table")
    with pytest.raises(AttributeError, match="has no field missing"):
        _ = table.missing
    with pytest.raises(AttributeError, match="has no fields"):
        _ = old(snapshot, "client_fds").len
    with pytest.raises(TypeError, match="is not a string"):
        _ = table.text
    with pytest.raises(TypeError, match="holds no bytes"):
        _ = old(snapshot, "config").bytes


# -- Context ---------------------------------------------------------------------


class NewProcessRecorder:
    """A stand-in for the new process that records what a transformer asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int | str | bytes, ...]]] = []

    def call(self, function: str, *args: int | str | bytes) -> int:
        self.calls.append((function, args))
        return 0x7000 + len(self.calls)

    def function(self, name: str) -> int:
        return {"table_new": 0x1111, "malloc@libc.so.6": 0x2222}[name]


@pytest.fixture
def context(snapshot: Snapshot) -> tuple[Context, NewProcessRecorder, list[tuple]]:
    process = NewProcessRecorder()
    fields: list[tuple] = []
    ctx = Context(snapshot, process, lambda *args: fields.append(args))
    return ctx, process, fields


def test_context_old_by_name_or_key(context: tuple[Context, Any, Any]) -> None:
    ctx, _, _ = context
    assert ctx.old("nclients") == 1
    assert ctx.old("served") == 2 and ctx.old("count_served:served") == 2
    assert ctx.old("fixtures/kvstore/v1.c:listen_fd") == 3
    assert ctx.old("table").nbuckets == NBUCKETS
    with pytest.raises(KeyError, match="no tagged variable hits"):
        ctx.old("hits")


def test_context_new_array_and_string_make_new_objects(context: tuple[Context, Any, Any]) -> None:
    ctx, _, _ = context
    name = ctx.string("héllo")
    assert (name.type_name, name.value, name.count) == ("char", "héllo".encode() + b"\0", 7)
    entry = ctx.new("struct   entry", key=name, value=ctx.string(b"v"), next=None)
    assert isinstance(entry, New)
    assert (entry.type_name, entry.count, entry.value["key"]) == ("struct entry", 1, name)
    buckets = ctx.array("struct entry *", [entry, None, None])
    assert (buckets.type_name, buckets.count, buckets.value) == (
        "struct entry *",
        3,
        [entry, None, None],
    )


def test_context_calls_and_sets_into_the_new_process(
    context: tuple[Context, NewProcessRecorder, list[tuple]],
) -> None:
    ctx, process, fields = context
    table = ctx.call("table_new", 256)
    added = ctx.call("table_put", table, "alpha", b"one")
    assert process.calls == [("table_new", (256,)), ("table_put", (table, "alpha", b"one"))]
    ctx.set(added, "struct  entry", "hits", ctx.old("table").count)
    assert fields == [(added, "struct entry", "hits", 2)]
    assert ctx.function("malloc@libc.so.6") == 0x2222


def test_struct_fields_win_over_helpers_of_the_same_name(snapshot: Snapshot) -> None:
    note = StructValue("struct note", {"text": 1, "raw": 2, "bytes": 3, "type_name": 4})
    view = wrap(note, snapshot)
    assert (view.text, view.raw, view.bytes, view.type_name) == (1, 2, 3, 4)
    assert view.type_of() == "struct note" and view.as_value() is note
    inbuf = old(snapshot, "inbufs")[0]  # no such fields: the helpers, as before
    assert inbuf.type_name == "struct inbuf" and inbuf.data.text == "GET"
    assert inbuf.data.as_text() == "GET" and inbuf.data.as_bytes() == inbuf.data.bytes


def test_wrap_gives_a_pointer_the_type_it_is_read_as(snapshot: Snapshot) -> None:
    table = next(v for v in snapshot.variables if v.name == "table")
    assert wrap(table.value, snapshot, table.c_type).type_of() == "struct table *"
    assert wrap(7, snapshot, "int") == 7  # a variable transformer's int is an int
