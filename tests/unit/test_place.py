"""The compiled restore's recipes (state/core/place.py) on the fixtures' real DWARF, and
place.c's integer conversions on hand-made columns."""

from __future__ import annotations

import ctypes
from array import array

import pytest
from clients import fixture_binary
from conftest import REPO
from kvstate import kvstore

from ekiden_trace.binary.dwarf.types import Member, get
from ekiden_trace.binary.program import Program
from ekiden_trace.plan.transformers import Transformers, load_transformers
from ekiden_trace.state.columns import TYPED
from ekiden_trace.state.core.place import (
    _MOVED,
    _RESOLVE,
    OP_COPY,
    OP_ENUM,
    OP_INT,
    OP_PTR,
    NotExpressible,
    RecipeCompiler,
    _Op,
    core_library,
)
from ekiden_trace.state.encode import Encoder
from ekiden_trace.state.snapshot import Snapshot, StopLocation


def compiler_for(old: Program, new: Program, transformers: Transformers) -> RecipeCompiler:
    snapshot = Snapshot(0, "", "", StopLocation(None, 0, None, None, None), [], {})
    return RecipeCompiler(Encoder(old, new, snapshot, transformers, None))  # type: ignore[arg-type]


def struct_type(program: Program, name: str) -> int:
    found = program.index.type_by_name(name)
    assert found is not None
    return found


def member(program: Program, struct: str, name: str) -> Member:
    info = get(program.index.types, struct_type(program, struct))
    return next(m for m in info.members if m.name == name)


def kv_compiler(transformers: Transformers | None = None) -> RecipeCompiler:
    xform = load_transformers(str(REPO / "fixtures" / "kvstore" / "xform_v1_v2.py"))
    return compiler_for(kvstore("v1"), kvstore("v2"), transformers or xform)


def test_entry_gains_hits_left_zero_and_its_pointers_are_relocated() -> None:
    compiler = kv_compiler()
    v1, v2 = kvstore("v1"), kvstore("v2")
    ops, table = compiler.compile(struct_type(v1, "struct entry"), struct_type(v2, "struct entry"))
    wanted = [
        (OP_PTR, member(v1, "struct entry", f).offset, member(v2, "struct entry", f).offset)
        for f in ("key", "value", "next")
    ]
    assert [op[:3] for op in ops] == wanted
    assert table == []
    hits = member(v2, "struct entry", "hits").offset
    assert all(op[2] != hits for op in ops)


def test_table_count_renamed_nentries_and_the_hash_a_function_pointer() -> None:
    compiler = kv_compiler()
    v1, v2 = kvstore("v1"), kvstore("v2")
    ops, _ = compiler.compile(struct_type(v1, "struct table"), struct_type(v2, "struct table"))
    count, nentries = member(v1, "struct table", "count"), member(v2, "struct table", "nentries")
    assert (OP_INT, count.offset, nentries.offset, 8 | 8 << 16, 0) in ops
    hash_op = next(op for op in ops if op[1] == member(v1, "struct table", "hash").offset)
    assert hash_op[0] == OP_PTR and hash_op[4] == 1  # PTR_FUNCTION: never relocated


def test_without_the_rename_nentries_stays_zero() -> None:
    v1, v2 = kvstore("v1"), kvstore("v2")
    ops, _ = kv_compiler(Transformers()).compile(
        struct_type(v1, "struct table"), struct_type(v2, "struct table")
    )
    nentries = member(v2, "struct table", "nentries").offset
    assert all(op[2] != nentries for op in ops)


def test_identity_recipe_of_the_rollback_is_one_op_per_field() -> None:
    v1 = kvstore("v1")
    compiler = compiler_for(v1, v1, Transformers())
    ops, _ = compiler.compile(struct_type(v1, "struct table"), struct_type(v1, "struct table"))
    info = get(v1.index.types, struct_type(v1, "struct table"))
    assert [(op[1], op[2]) for op in ops] == [(m.offset, m.offset) for m in info.members]


def test_a_hinted_union_is_not_expressible() -> None:
    v1, v2 = kvstore("v1"), kvstore("v2")
    with pytest.raises(NotExpressible, match="union"):
        kv_compiler().compile(
            struct_type(v1, "struct server_config"), struct_type(v2, "struct server_config")
        )


def test_a_type_or_field_transformer_is_not_expressible() -> None:
    v1, v2 = kvstore("v1"), kvstore("v2")
    entry = (struct_type(v1, "struct entry"), struct_type(v2, "struct entry"))
    by_type = Transformers(types={"struct entry": lambda old, ctx: old})
    with pytest.raises(NotExpressible, match="transformer"):
        kv_compiler(by_type).compile(*entry)
    by_field = Transformers(fields={("struct entry", "hits"): lambda old, ctx: 1})
    with pytest.raises(NotExpressible, match="transformer"):
        kv_compiler(by_field).compile(*entry)


def test_rename_fixture_char_array_copied_under_its_new_name_and_a_dropped_field_skipped() -> None:
    v1, v2 = (Program(fixture_binary("rename", v)) for v in ("v1", "v2"))
    xform = load_transformers(str(REPO / "fixtures" / "rename" / "xform_v1_v2.py"))
    ops, _ = compiler_for(v1, v2, xform).compile(
        struct_type(v1, "struct stats"), struct_type(v2, "struct stats")
    )
    owner, user = member(v1, "struct stats", "owner"), member(v2, "struct stats", "user")
    assert (OP_COPY, owner.offset, user.offset, 16, 0) in ops
    debug = member(v1, "struct stats", "debug_bytes").offset
    assert all(op[1] != debug for op in ops)


def test_hints_fixture_void_pointer_with_a_buffer_hint_is_relocated() -> None:
    v1, v2 = (Program(fixture_binary("hints", v)) for v in ("v1", "v2"))
    ops, _ = compiler_for(v1, v2, Transformers()).compile(
        struct_type(v1, "struct node"), struct_type(v2, "struct node")
    )
    key = member(v1, "struct node", "key").offset
    flags = next(op[4] for op in ops if op[1] == key)
    assert flags == 0  # not PTR_UNTYPED: the capture makes a buffer object of it


def convert(value: int, src: tuple[int, bool], dst: tuple[int, bool]) -> int | None:
    """place.c's OP_INT over one hand-made object: the converted value, None when refused."""
    lib = core_library()
    raw = (value & ((1 << 8 * src[0]) - 1)).to_bytes(src[0], "little")
    columns = [
        array("Q", [0x1000]),
        array("q", [1]),
        array("Q", [1]),
        array("B", [TYPED]),
        array("Q", [0, len(raw)]),
    ]
    data = ctypes.create_string_buffer(raw, len(raw) + 1)
    resolve, moved = _RESOLVE(lambda *_: -1), _MOVED(lambda *_: -1)
    ctx = lib.ek_place_open(1, *(c.buffer_info()[0] for c in columns), data, resolve, moved)
    try:
        arg = src[0] | src[1] << 8 | dst[0] << 16 | dst[1] << 24
        op = (_Op * 1)((OP_INT, 0, 0, arg, 0))
        assert lib.ek_place_recipe(ctx, 2, op, 1, src[0], dst[0], None, 0) == 0
        seeds, recipes = array("I", [0]), array("i", [2])
        built = lib.ek_place_build(ctx, seeds.buffer_info()[0], recipes.buffer_info()[0], 1)
        if built < 0:
            return None
        out = ctypes.string_at(lib.ek_place_out(ctx), dst[0])
        return int.from_bytes(out, "little", signed=dst[1])
    finally:
        lib.ek_place_close(ctx)


def test_integers_widen_with_their_sign_and_narrow_with_a_range_check() -> None:
    assert convert(-5, (1, True), (8, True)) == -5
    assert convert(250, (1, False), (8, True)) == 250
    assert convert(-1, (4, True), (8, False)) is None
    assert convert(300, (8, True), (1, True)) is None
    assert convert(127, (8, True), (1, True)) == 127
    assert convert(2**64 - 1, (8, False), (8, True)) is None
    assert convert(2**64 - 1, (8, False), (8, False)) == 2**64 - 1
    assert convert(-(2**31), (4, True), (2, True)) is None


def test_enum_remapped_by_enumerator_name() -> None:
    v1, v2 = kvstore("v1"), kvstore("v2")
    mode = (struct_type(v1, "enum mode"), struct_type(v2, "enum mode"))
    ops, table = kv_compiler().compile(*mode)
    assert [op[0] for op in ops] == [OP_ENUM]
    enumerators = get(v2.index.types, mode[1]).enumerators
    old = get(v1.index.types, mode[0]).enumerators
    assert dict(zip(table[::2], table[1::2], strict=True)) == {
        number: enumerators[name] for name, number in old.items()
    }
    assert ops[0][4] == len(old)  # its pairs start the table
