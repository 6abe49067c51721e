"""Snapshots built in memory, shaped as capture makes them from fixtures/kvstore.

`kvstore_v1_snapshot()` is what `inspect` reads from kvstore v1 after a client
sent `SET alpha one` and `SET beta two`: the same variables, types, heap objects
and kinds of values (compare `ekiden-trace inspect --json` on a live v1).  The
addresses are made up but fixed, so outputs built from it do not vary.
"""

from __future__ import annotations

from functools import cache

from clients import fixture_binary

from ekiden_trace.binary.program import Program
from ekiden_trace.state.snapshot import (
    ArrayValue,
    CapturedVariable,
    CharArray,
    EnumValue,
    FunctionRef,
    HeapObject,
    ObjectRef,
    Pointer,
    Snapshot,
    StopLocation,
    StructValue,
    UnionValue,
    Value,
)

NBUCKETS = 64
MAX_CLIENTS = 64
INBUF_SIZE = 2048
HEAP = 0x5555_0000_0000  # where the made-up heap objects of v1 live
DATA = 0x5555_4000_0000  # where v1's globals live
DJB2 = 0x5555_3000_1230  # v1's djb2() at run time
KEYS = {"alpha": ("one", 43), "beta": ("two", 33)}  # key: (value, its bucket under djb2)


@cache
def kvstore(version: str) -> Program:
    """fixtures/kvstore/VERSION, read once per test session."""
    return Program(fixture_binary("kvstore", version))


def ptr(object_id: int) -> Pointer:
    """A pointer to heap object `object_id` of the snapshot below."""
    return Pointer(HEAP + 0x100 * object_id, ObjectRef(object_id))


NULL = Pointer(0)


def _variable(
    name: str, c_type: str, declaration: str, value: Value, **where: str
) -> CapturedVariable:
    scope = where.get("scope", "global")
    function = where.get("function")
    key = name if scope == "global" else f"{where.get('key_prefix', function)}:{name}"
    return CapturedVariable(
        name=name,
        key=key,
        scope=scope,
        scope_text=where.get("scope_text", "global"),
        function=function,
        file="fixtures/kvstore/v1.c",
        c_type=c_type,
        declaration=declaration,
        address=None,  # set in order below
        value=value,
    )


def type_id_of(program: Program, type_name: str) -> int:
    """The DWARF id of a C type of program: 'struct entry', 'char', 'struct entry *'."""
    base = program.index.type_by_name(type_name.rstrip(" *"))
    assert base is not None, type_name
    types = program.index.types
    for _ in range(type_name.count("*")):
        base = next(t.id for t in types.values() if t.kind == "pointer" and t.target == base)
    return base


def kvstore_v1_snapshot() -> Snapshot:
    """kvstore v1 with one client connected (fd 4) and the keys alpha=one, beta=two."""
    objects: dict[int, HeapObject] = {}

    def heap(oid: int, type_name: str, count: int, **content: object) -> None:
        type_id = type_id_of(kvstore("v1"), type_name)
        objects[oid] = HeapObject(oid, HEAP + 0x100 * oid, type_name, count, type_id, **content)

    buckets: list[Value] = [NULL] * NBUCKETS
    oid = 3
    for key, (value, bucket) in KEYS.items():
        entry, key_id, value_id = oid, oid + 1, oid + 2
        fields: dict[str, Value] = {"key": ptr(key_id), "value": ptr(value_id), "next": NULL}
        heap(entry, "struct entry", 1, value=StructValue("struct entry", fields))
        heap(key_id, "char", len(key), string=key.encode())
        heap(value_id, "char", len(value), string=value.encode())
        buckets[bucket] = ptr(entry)
        oid += 3
    table = {
        "buckets": ptr(2),
        "nbuckets": NBUCKETS,
        "count": len(KEYS),
        "hash": Pointer(DJB2, FunctionRef("djb2")),
    }
    heap(1, "struct table", 1, value=StructValue("struct table", table))
    heap(2, "struct entry *", NBUCKETS, value=ArrayValue(buckets))
    objects = dict(sorted(objects.items()))

    config = StructValue(
        "struct server_config",
        {
            "limits": StructValue("struct limits", {"max_clients": 64, "max_value_len": 1024}),
            "mode": EnumValue("MODE_READONLY", 1, "enum mode"),
            "kind": EnumValue("ENDPOINT_TCP", 0, "enum endpoint_kind"),
            "endpoint": UnionValue(
                "union {...}", (7000).to_bytes(4, "little") + bytes(12), "port", {"port": 7000}
            ),
            "histogram": ArrayValue([2, 0, 0, 0, 0, 0, 0, 0]),
        },
    )
    inbuf = StructValue(
        "struct inbuf", {"len": 3, "data": CharArray(b"GET" + bytes(INBUF_SIZE - 3))}
    )
    empty = StructValue("struct inbuf", {"len": 0, "data": CharArray(bytes(INBUF_SIZE))})
    static = {"scope": "file_static", "scope_text": "file static of v1.c"}
    variables = [
        _variable("client_fds", "int [64]", "int client_fds[64]", ArrayValue([4] + [0] * 63)),
        _variable("config", "struct server_config", "struct server_config config", config),
        _variable("nclients", "int", "int nclients", 1),
        _variable("table", "struct table *", "struct table *table", ptr(1)),
        _variable(
            "served",
            "unsigned long",
            "unsigned long served",
            2,
            scope="function_static",
            scope_text="function static of count_served",
            function="count_served",
        ),
        _variable(
            "inbufs",
            "struct inbuf [64]",
            "struct inbuf inbufs[64]",
            ArrayValue([inbuf] + [empty] * (MAX_CLIENTS - 1)),
            key_prefix="fixtures/kvstore/v1.c",
            **static,
        ),
        _variable(
            "listen_fd", "int", "int listen_fd", 3, key_prefix="fixtures/kvstore/v1.c", **static
        ),
    ]
    for i, variable in enumerate(variables):
        variable.address = DATA + 0x100 * i
    stop = StopLocation(
        "poll_loop",
        0x5555_3000_2340,
        "main",
        "fixtures/kvstore/v1.c",
        566,
        ["main", "__libc_start_call_main@libc.so.6", "__libc_start_main@libc.so.6", "_start"],
    )
    return Snapshot(4242, "fixtures/kvstore/v1", "0" * 40, stop, variables, objects, 4096)
