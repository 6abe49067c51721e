"""The compiled capture's recipes (state/core/walk.py), from fixture binaries' DWARF and
hints: what each pointer slot becomes, and what no recipe expresses."""

from __future__ import annotations

import pytest
from clients import fixture_binary

from ekiden_trace.binary.dwarf.types import strip
from ekiden_trace.binary.program import Program
from ekiden_trace.state.columns import HeapColumns
from ekiden_trace.state.core.walk import (
    CSTRING,
    FOLLOW,
    FUNCTION,
    LEN_FIELD,
    LEN_ONE,
    NotExpressible,
    RecipeCompiler,
    SlotSpec,
)
from ekiden_trace.state.decode import Decoder, HeapPointer
from ekiden_trace.state.lazy import CapturedSource
from ekiden_trace.state.snapshot import Pointer


def _compiler(fixture: str, version: str) -> tuple[RecipeCompiler, Program]:
    """A compiler over the program offline (no process: globals are not readable)."""
    program = Program(fixture_binary(fixture, version))
    decoder = Decoder(CapturedSource(program, HeapColumns()), _unread, lambda item: None)
    return RecipeCompiler(decoder), program


def _unread(addr: int, size: int) -> bytes:
    raise AssertionError("recipes are compiled without reading memory here")


def _type(program: Program, name: str) -> int:
    found = program.index.type_by_name(name)
    assert found is not None, name
    return strip(program.index.types, found)


def test_kvstore_table_and_entries() -> None:
    compiler, program = _compiler("kvstore", "v1")
    table = compiler.recipe(_type(program, "struct table"))
    recipes = compiler.recipes
    assert recipes.sizes[table] == 32
    buckets, hash_fn = recipes.slots[table]
    # buckets: an array of nbuckets (the sibling field 8 bytes after it) bucket pointers
    assert (buckets.off, buckets.kind, buckets.len_kind) == (0, FOLLOW, LEN_FIELD)
    assert (buckets.len_delta, buckets.len_size, buckets.len_signed) == (8, 8, False)
    assert hash_fn == SlotSpec(24, FUNCTION)
    bucket = buckets.target
    assert recipes.sizes[bucket] == 8
    (chain,) = recipes.slots[bucket]
    entry = chain.target
    assert recipes.type_of(entry) == _type(program, "struct entry")
    key, value, next_entry = recipes.slots[entry]
    assert key.kind == value.kind == CSTRING and recipes.type_of(key.target) == recipes.type_of(
        value.target
    )
    assert (next_entry.off, next_entry.kind, next_entry.target) == (16, FOLLOW, entry)
    assert next_entry.len_kind == LEN_ONE


def test_a_root_of_a_char_pointer_is_a_string() -> None:
    compiler, program = _compiler("kvstore", "v1")
    char = _type(program, "char")
    code, count = compiler.root(HeapPointer(Pointer(0x1000), char, None, None)) or (0, 0)
    assert code < 0 and compiler.recipes.type_of(code) == char and count == 0


@pytest.mark.parametrize(
    ("struct", "reason"),
    [
        ("struct hash", "a buffer hint"),  # its nodes' keys: a buffer of table->key_size
        ("struct mystr", "a string hint"),
    ],
)
def test_hints_the_recipes_do_not_express(struct: str, reason: str) -> None:
    compiler, program = _compiler("hints", "v1")
    with pytest.raises(NotExpressible, match=reason):
        compiler.recipe(_type(program, struct))


def test_a_union_chosen_by_a_hint_is_not_expressible() -> None:
    compiler, program = _compiler("kvstore", "v1")
    with pytest.raises(NotExpressible, match="chosen by a hint"):
        compiler.recipe(_type(program, "struct server_config"))
