"""The Encoder (state/encode.py): kvstore v1's values written as v2's types.

The new process is a `MemoryProcess`: the `Backend` protocol over a bytearray
heap with a bump allocator and v2's real symbol table at a load bias.  The
types are v2's real DWARF (fixtures/kvstore/v2); the values are v1's state as
capture shapes it (tests/unit/kvstate.py).  Expected bytes are written out from
v2's C declarations (x86-64 layout), not from the DWARF the encoder reads.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from clients import fixture_binary
from conftest import REPO
from elftools.elf.elffile import ELFFile
from kvstate import DJB2, KEYS, kvstore, kvstore_v1_snapshot, ptr

from ekiden_trace.binary.program import Program
from ekiden_trace.plan.transformers import Transformers, load_transformers
from ekiden_trace.state.encode import Backend, ConversionError, Encoder
from ekiden_trace.state.snapshot import LiteralRef, Pointer, Snapshot
from ekiden_trace.state.views import New

BIAS = 0x5600_0000_0000  # where the new process's program is loaded
HEAP = 0x7F00_0000_0000  # start of its heap
SIZES = {"struct table": 32, "struct entry": 32, "struct server_config": 48}  # v2's sizeof


class MemoryProcess:
    """The new process in memory: malloc is a bump allocator over `heap`, symbols are
    v2's at BIAS, and every write must land inside an allocation."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.heap = bytearray()
        self.allocations: dict[int, int] = {}  # address: size
        self.batches: list[list[int]] = []  # sizes asked of each malloc_many
        self.queued: list[tuple[int, bytes]] = []

    def _malloc(self, size: int) -> int:
        addr = HEAP + len(self.heap)
        self.heap += bytes((size + 15) // 16 * 16)
        self.allocations[addr] = size
        return addr

    def malloc_many(self, sizes: list[int]) -> list[int]:
        self.batches.append(list(sizes))
        return [self._malloc(size) for size in sizes]

    def string(self, text: str | bytes) -> int:
        data = (text.encode() if isinstance(text, str) else text) + b"\0"
        addr = self._malloc(len(data))
        self.write(addr, data)
        return addr

    def symbol_address(self, name: str) -> int:
        sym = self.program.symbols.by_name.get(name)
        if sym is None:
            raise ConversionError(f"v2 has no symbol {name}, which a pointer of v1 points to.")
        return sym.addr + BIAS

    def function(self, name: str) -> int:
        return self.symbol_address(name)

    def call(self, function: str, *args: int | str | bytes) -> int:
        raise AssertionError(f"no transformer here calls into the process ({function})")

    def write(self, addr: int, data: bytes) -> None:
        start = next(
            (
                a
                for a, size in self.allocations.items()
                if a <= addr and addr + len(data) <= a + size
            ),
            None,
        )
        assert start is not None, f"write of {len(data)} bytes at {addr:#x} is outside the heap"
        self.heap[addr - HEAP : addr - HEAP + len(data)] = data

    def write_later(self, addr: int, data: bytes) -> None:
        self.queued.append((addr, data))

    def flush(self) -> None:
        for addr, data in self.queued:
            self.write(addr, data)
        self.queued = []

    # reading back, for the checks
    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.heap[addr - HEAP : addr - HEAP + size])

    def word(self, addr: int) -> int:
        return struct.unpack("<Q", self.read(addr, 8))[0]

    def c_string(self, addr: int) -> bytes:
        data = self.read(addr, self.allocations[addr])
        assert data.endswith(b"\0"), data
        return data[:-1]


def test_memory_process_implements_the_backend_protocol() -> None:
    """Every method encode.Backend (and the NewProcess it extends) asks for."""
    wanted = {name for name in dir(Backend) if not name.startswith("_")}
    assert wanted >= {"malloc_many", "write_later", "flush", "call", "function"}
    assert wanted <= set(dir(MemoryProcess))


def make_encoder(
    snapshot: Snapshot, new: str = "v2", transformers: Transformers | None = None
) -> tuple[Encoder, MemoryProcess]:
    process = MemoryProcess(kvstore(new))
    encoder = Encoder(
        kvstore("v1"), kvstore(new), snapshot, transformers or Transformers(), process
    )
    return encoder, process


def tag_type(version: str, name: str) -> int:
    """The DWARF type of tagged variable `name` of kvstore VERSION."""
    return next(t.variable.type for t in kvstore(version).tags if t.name == name)


def pointer_to(type_name: str) -> int:
    """The id of v2's DWARF type `TYPE_NAME *`."""
    index = kvstore("v2").index
    target = index.type_by_name(type_name)
    return next(t.id for t in index.types.values() if t.kind == "pointer" and t.target == target)


def old_value(snapshot: Snapshot, name: str) -> Any:
    """The captured value of old variable `name`."""
    return next(v.value for v in snapshot.variables if v.name == name)


def initial_bytes(version: str, symbol: str) -> bytes:
    """The bytes of a global as the new program's file initialises it (.data)."""
    sym = kvstore(version).symbols.by_name[symbol]
    with open(fixture_binary("kvstore", version), "rb") as f:
        data = ELFFile(f).get_section_by_name(".data")
        start = sym.addr - data["sh_addr"]
        return data.data()[start : start + sym.size]


def encode_variable(encoder: Encoder, snapshot: Snapshot, name: str, initial: bytes) -> bytes:
    """Encode old variable `name` over v2's initial bytes, as the restore does at its tag."""
    tid = tag_type("v2", name)
    value = old_value(snapshot, name)
    buf = bytearray(initial)
    encoder.materialise([(value, tid)])
    encoder.encode(value, tid, buf, 0, name)
    return bytes(buf)


# -- values in place -----------------------------------------------------------------


def test_config_fields_by_name_widened_and_initial_value_kept() -> None:
    snapshot = kvstore_v1_snapshot()
    config = old_value(snapshot, "config")
    config.fields["limits"].fields["max_value_len"] = -5  # sign-extended when widened
    encoder, _ = make_encoder(snapshot)
    initial = initial_bytes("v2", "config")
    assert len(initial) == SIZES["struct server_config"]
    assert struct.unpack_from("<i", initial, 16) == (64,)  # v2's MAX_KEY_LEN initialiser

    out = encode_variable(encoder, snapshot, "config", initial)
    # struct limits { int max_clients; long max_value_len; int max_key_len; } at 0,
    # enum mode at 24, enum endpoint_kind at 28, union { int port; char path[16]; } at 32
    assert struct.unpack_from("<i4xqi", out, 0) == (64, -5, 64)
    assert struct.unpack_from("<iii", out, 24) == (1, 0, 7000)  # MODE_READONLY, TCP, port
    assert out[20:24] == initial[20:24] and out[36:] == initial[36:]  # padding, rest of union


def test_int_array_and_char_array_copied() -> None:
    snapshot = kvstore_v1_snapshot()
    encoder, _ = make_encoder(snapshot)
    fds = encode_variable(encoder, snapshot, "client_fds", bytes(256))
    assert struct.unpack("<64i", fds) == (4, *[0] * 63)
    inbufs = encode_variable(encoder, snapshot, "inbufs", b"\xaa" * (64 * 2056))
    assert (
        inbufs[:11] == struct.pack("<Q", 3) + b"GET"
    )  # struct inbuf { size_t len; char data[2048]; }
    assert inbufs[11:2056] == bytes(2045)


def test_narrowing_a_value_that_does_not_fit_is_refused() -> None:
    """v2 -> v1: a long max_value_len of 2^40 does not fit v1's int (the message calls
    the version being written v2, whichever it is)."""
    snapshot = kvstore_v1_snapshot()
    old_value(snapshot, "config").fields["limits"].fields["max_value_len"] = 1 << 40
    process = MemoryProcess(kvstore("v1"))
    encoder = Encoder(kvstore("v2"), kvstore("v1"), snapshot, Transformers(), process)
    tid = tag_type("v1", "config")
    with pytest.raises(
        ConversionError,
        match=r"config\.limits\.max_value_len: the value 1099511627776 does not fit v2's int",
    ):
        encoder.encode(old_value(snapshot, "config"), tid, bytearray(96), 0, "config")


# -- the heap --------------------------------------------------------------------------


def encode_table(transformers: Transformers | None = None, snapshot: Snapshot | None = None):
    snapshot = snapshot or kvstore_v1_snapshot()
    encoder, process = make_encoder(snapshot, transformers=transformers)
    out = encode_variable(encoder, snapshot, "table", bytes(8))
    return struct.unpack("<Q", out)[0], process, encoder


def test_heap_graph_allocated_in_one_batch_with_v2_sizes() -> None:
    table, process, encoder = encode_table()
    assert table in process.allocations
    (batch,) = process.batches  # one malloc_many for the whole graph
    # the table, its 64 buckets, two entries, and "alpha", "one", "beta", "two" with NULs
    assert sorted(batch) == sorted([32, 64 * 8, 32, 32, 6, 4, 5, 4])
    assert process.queued == []  # materialise flushed its writes
    assert encoder.objects_written == 8 and encoder.bytes_written == sum(batch)


def test_table_fields_by_name_and_function_pointer_by_symbol() -> None:
    table, process, _ = encode_table()
    buckets, nbuckets, nentries, hash_fn = struct.unpack("<QQQQ", process.read(table, 32))
    assert process.allocations[buckets] == 64 * 8
    assert nbuckets == 64
    assert nentries == 0  # v1's count has no v2 field of that name: zero on the heap
    djb2 = kvstore("v2").symbols.by_name["djb2"]
    assert hash_fn == BIAS + djb2.addr != DJB2  # v2's djb2, not v1's address


def test_entries_keep_keys_values_and_get_zero_hits() -> None:
    table, process, _ = encode_table()
    buckets = process.word(table)
    for key, (value, bucket) in KEYS.items():
        entry = process.word(buckets + 8 * bucket)
        key_ptr, value_ptr, hits, next_ptr = struct.unpack("<QQQQ", process.read(entry, 32))
        assert process.c_string(key_ptr) == key.encode()
        assert process.c_string(value_ptr) == value.encode()
        assert (hits, next_ptr) == (0, 0)
    used = {KEYS[k][1] for k in KEYS}
    assert all(process.word(buckets + 8 * i) == 0 for i in range(64) if i not in used)


def test_shared_objects_and_cycles_are_written_once() -> None:
    """Both buckets point to alpha's entry, whose next points to itself."""
    snapshot = kvstore_v1_snapshot()
    buckets = snapshot.objects[2].value
    alpha, beta = KEYS["alpha"][1], KEYS["beta"][1]
    buckets.items[beta] = buckets.items[alpha]
    entry_id = buckets.items[alpha].target.object_id
    snapshot.objects[entry_id].value.fields["next"] = ptr(entry_id)
    table, process, _ = encode_table(snapshot=snapshot)
    (batch,) = process.batches
    assert len(batch) == 5  # table, buckets, one entry, "alpha", "one": beta's is unreached
    heads = process.word(table)
    entry = process.word(heads + 8 * alpha)
    assert process.word(heads + 8 * beta) == entry
    assert process.word(entry + 24) == entry  # next: the cycle, in v2's layout


def test_field_transformer_file_fills_the_renamed_field() -> None:
    transformers = load_transformers(str(REPO / "fixtures" / "kvstore" / "xform_v1_v2.py"))
    table, process, _ = encode_table(transformers)
    assert struct.unpack_from("<Q", process.read(table, 32), 16) == (len(KEYS),)


def test_missing_function_symbol_is_a_conversion_error() -> None:
    """v3 has no djb2: the table's hash cannot be carried over without a transformer."""
    snapshot = kvstore_v1_snapshot()
    encoder, _ = make_encoder(snapshot, new="v3")
    tid = tag_type("v3", "table")
    with pytest.raises(ConversionError, match="v2 has no symbol djb2"):
        encoder.materialise([(old_value(snapshot, "table"), tid)])


def test_new_objects_and_strings_from_a_transformer() -> None:
    """What a variable transformer returns: ctx.new with ctx.string, a str, a literal."""
    snapshot = kvstore_v1_snapshot()
    encoder, process = make_encoder(snapshot)
    ctx = encoder.context
    entry_type = pointer_to("struct entry")
    made = ctx.new(
        "struct entry",
        key=ctx.string("gamma"),
        value="three",
        hits=9,
        next=None,
    )
    assert isinstance(made, New)
    buf = bytearray(8)
    encoder.materialise([(made, entry_type)])
    encoder.encode(made, entry_type, buf, 0, "entry")
    entry = struct.unpack("<Q", buf)[0]
    key_ptr, value_ptr, hits, next_ptr = struct.unpack("<QQQQ", process.read(entry, 32))
    assert process.c_string(key_ptr) == b"gamma"
    assert process.c_string(value_ptr) == b"three"  # a str becomes a new string
    assert (hits, next_ptr) == (9, 0)
    assert process.batches == [[SIZES["struct entry"], 6]]  # the entry and "gamma\0"

    literal = Pointer(0x5555_3000_4000, LiteralRef(b"readonly"))  # a v1 string literal
    buf = bytearray(8)
    encoder.encode(literal, pointer_to("char"), buf, 0, "banner")
    assert process.c_string(struct.unpack("<Q", buf)[0]) == b"readonly"


def test_set_field_writes_one_field_in_v2s_layout() -> None:
    """ctx.set(address, type, field, value), as xform_v2_v3.py sets each entry's hits."""
    snapshot = kvstore_v1_snapshot()
    encoder, process = make_encoder(snapshot)
    (entry,) = process.malloc_many([SIZES["struct entry"]])
    encoder.context.set(entry, "struct entry", "hits", 41)
    assert process.read(entry, 32) == bytes(16) + struct.pack("<Q", 41) + bytes(8)
    with pytest.raises(ConversionError, match="no plain field count"):
        encoder.context.set(entry, "struct table", "count", 1)  # v1's name, not v2's


def test_a_one_element_array_from_a_transformer_is_an_array() -> None:
    """ctx.array(type, [x]) is an array of one element, not the scalar x."""
    snapshot = kvstore_v1_snapshot()
    encoder, process = make_encoder(snapshot)
    ctx = encoder.context
    entry = ctx.new("struct entry", key="k", value="v", hits=1, next=None)
    buckets = ctx.array("struct entry *", [entry])
    types = kvstore("v2").index.types
    entry_pp = next(
        t.id
        for t in types.values()
        if t.kind == "pointer" and t.target == pointer_to("struct entry")
    )
    buf = bytearray(8)
    encoder.materialise([(buckets, entry_pp)])
    encoder.encode(buckets, entry_pp, buf, 0, "buckets")
    (array,) = struct.unpack("<Q", buf)
    assert process.allocations[array] == 8  # one pointer
    key_ptr = process.word(process.word(array))
    assert process.c_string(key_ptr) == b"k"


# -- transformer results are checked before anything is written ---------------------


def wrong_table(old: Any, ctx: Any) -> Any:
    return "not a table"


def nothing(old: Any, ctx: Any) -> Any:
    return None


def entry_with_a_bad_field(old: Any, ctx: Any) -> Any:
    return ctx.new("struct entry", key=ctx.string("k"), hits=["many"])


def config_with_an_unknown_field(old: Any, ctx: Any) -> Any:
    return {"limits": {"max_key_len": 8}, "colour": 3}


@pytest.mark.parametrize(
    ("fn", "name", "words"),
    [
        (
            wrong_table,
            "table",
            "wrong_table (of table) returned a value v2 cannot hold: table: "
            "a str cannot be written as v2's struct table *",
        ),
        (
            nothing,
            "client_fds",
            "nothing (of client_fds) returned a value v2 cannot hold: "
            "client_fds: None cannot be written as v2's int [64]",
        ),
        (entry_with_a_bad_field, "table", "table->hits: a list cannot be written as v2's"),
        (
            config_with_an_unknown_field,
            "config",
            "config: v2's struct server_config has no field colour",
        ),
    ],
)
def test_a_transformer_result_of_the_wrong_shape_is_refused_before_any_write(
    fn: Any, name: str, words: str
) -> None:
    snapshot = kvstore_v1_snapshot()
    encoder, process = make_encoder(snapshot)
    tid = pointer_to("struct entry") if fn is entry_with_a_bad_field else tag_type("v2", name)
    with pytest.raises(ConversionError) as refused:
        encoder.transform(fn, name, None, tid, name)
    assert words in str(refused.value)
    assert process.batches == [] and process.heap == bytearray()  # nothing allocated


def test_a_transformer_result_of_the_right_shape_passes() -> None:
    snapshot = kvstore_v1_snapshot()
    encoder, _ = make_encoder(snapshot)

    def entry(old: Any, ctx: Any) -> Any:
        return ctx.new("struct entry", key=ctx.string("k"), value="v", hits=1, next=None)

    made = encoder.transform(entry, "entry", None, pointer_to("struct entry"), "entry")
    assert isinstance(made, New)
    fds = encoder.transform(
        lambda o, c: [1, 2], "client_fds", None, tag_type("v2", "client_fds"), "client_fds"
    )
    assert fds == [1, 2]
