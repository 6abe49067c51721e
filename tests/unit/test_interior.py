"""Pointers inside heap objects (state/interior.py, state/checks.py) on the real DWARF of
fixtures/interior: v2's struct range inserts `unsigned long sum` before `hits`."""

from __future__ import annotations

import pytest
from clients import fixture_binary

from ekiden_trace.binary.program import Program
from ekiden_trace.plan.planner import plan_update
from ekiden_trace.plan.transformers import Transformers
from ekiden_trace.state.checks import check_snapshot
from ekiden_trace.state.interior import moved_offset
from ekiden_trace.state.snapshot import (
    CapturedVariable,
    HeapObject,
    ObjectRef,
    Pointer,
    Snapshot,
    StopLocation,
)

HEAP = 0x5000_0000


@pytest.fixture(scope="module")
def programs() -> tuple[Program, Program]:
    return Program(fixture_binary("interior", "v1")), Program(fixture_binary("interior", "v2"))


def _range(program: Program) -> int:
    found = program.index.type_by_name("struct range")
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("old", "new"),
    [(0, 0), (12, 24), (2 * 12 + 4, 2 * 24 + 4), (2 * 12 + 8, 2 * 24 + 16)],
    ids=["start", "element 1", "ranges[2].hi", "ranges[2].hits"],
)
def test_a_place_in_an_array_moves_with_its_field(
    programs: tuple[Program, Program], old: int, new: int
) -> None:
    v1, v2 = programs
    types = v1.index.types, v2.index.types
    assert moved_offset(types[0], _range(v1), types[1], _range(v2), old) == new


def test_a_place_inside_a_field_cannot_move(programs: tuple[Program, Program]) -> None:
    v1, v2 = programs
    moved = moved_offset(v1.index.types, _range(v1), v2.index.types, _range(v2), 12 + 9)
    assert moved == "points inside an element of struct range, not at the start of a field"


def _snapshot(program: Program, offset: int) -> Snapshot:
    ranges = HeapObject(1, HEAP, "struct range", 4, _range(program))
    pointer = Pointer(HEAP + offset, ObjectRef(1, offset))
    variable = CapturedVariable(
        "last_hits", "last_hits", "global", "global", None, "fixtures/interior/v1.c",
        "unsigned int *", "unsigned int *last_hits", 0x1000, pointer,
    )  # fmt: skip
    stop = StopLocation("serve_loop", 0, "main", None, None)
    return Snapshot(1, str(program.path), program.build_id, stop, [variable], {1: ranges})


def test_the_checks_before_the_exec_refuse_what_the_encoder_could_not_map(
    programs: tuple[Program, Program],
) -> None:
    plan = plan_update(*programs, Transformers())
    assert check_snapshot(plan, _snapshot(programs[0], 12 + 8)) == []
    assert check_snapshot(plan, _snapshot(programs[0], 12 + 9)) == [
        "last_hits points inside an element of struct range, not at the start of a field"
    ]
