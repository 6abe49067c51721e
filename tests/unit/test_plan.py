"""The static update plan (`plan_update`) on the fixtures' real binaries and DWARF.

No process is involved: each test reads two binaries and checks what `diff`
and `attach` would decide for each tagged variable and type.
"""

from __future__ import annotations

import textwrap
from functools import cache
from pathlib import Path

import pytest
from clients import fixture_binary
from conftest import REPO, compile_marked
from kvstate import kvstore, kvstore_v1_snapshot

from ekiden_trace.binary.program import Program
from ekiden_trace.plan.planner import UpdatePlan, plan_update
from ekiden_trace.plan.transformers import Transformers, load_transformers
from ekiden_trace.render import plan_json
from ekiden_trace.state.checks import check_snapshot
from ekiden_trace.state.snapshot import FunctionRef, Pointer, StructValue


@cache
def program(name: str, version: str) -> Program:
    return Program(fixture_binary(name, version))


def plan(name: str, old: str, new: str, xform: str | None = None) -> UpdatePlan:
    """The plan of fixtures/NAME/OLD -> NEW, with fixtures/NAME/XFORM as transformer file."""
    transformers = load_transformers(str(REPO / "fixtures" / name / xform) if xform else None)
    return plan_update(program(name, old), program(name, new), transformers)


def actions(update: UpdatePlan) -> dict[str, str]:
    return {v.key: v.action for v in update.variables}


def test_kvstore_v1_v2_transfers_everything_and_notes_each_changed_type() -> None:
    update = plan("kvstore", "v1", "v2")
    assert update.ok and update.problems == []
    assert actions(update) == {
        "client_fds": "transfer",
        "config": "transfer",
        "nclients": "transfer",
        "table": "transfer",
        "count_served:served": "transfer",
        # a file static is known by its source file; v1.c's `inbufs` is v2.c's `inbufs`
        "fixtures/kvstore/v2.c:inbufs": "transfer",
        "fixtures/kvstore/v2.c:listen_fd": "transfer",
    }
    inbufs = update.for_key("fixtures/kvstore/v2.c:inbufs")
    assert inbufs is not None and inbufs.old is not None
    assert inbufs.old.key == "fixtures/kvstore/v1.c:inbufs"
    assert update.type_notes == {
        "struct limits": [
            "field max_value_len: int -> long (widened)",
            "field max_key_len added (keeps v2's initial value)",
        ],
        "struct server_config": ["field histogram removed (dropped, not acknowledged)"],
        "struct entry": ["field hits added (keeps v2's initial value)"],
        "struct table": [
            "field count removed (dropped, likely renamed to nentries)",
            "field nentries added (keeps v2's initial value)",
        ],
    }
    assert [(d.what, d.acknowledged, d.renamed_to) for d in update.unacknowledged] == [
        ("struct server_config.histogram", False, None),
        ("struct table.count", False, "nentries"),
    ]


def test_rename_of_v1_v2_fills_the_renamed_field_and_acknowledges_the_drop() -> None:
    update = plan("kvstore", "v1", "v2", "xform_v1_v2.py")
    assert update.ok and update.unacknowledged == []
    assert update.type_notes["struct table"] == ["field count renamed to nentries"]
    assert [d.what for d in update.drops] == ["struct server_config.histogram"]
    assert actions(update)["table"] == "transfer"  # the rest of the table moves by itself


def test_downgrade_narrows_a_field_and_needs_its_transformer_for_the_table() -> None:
    update = plan("kvstore", "v3", "v1", "xform_v3_v1.py")
    assert update.ok
    assert actions(update)["table"] == "transformer"
    assert (
        "field max_value_len: long -> int (narrowed, checked per value)"
        in (update.type_notes["struct limits"])
    )


def v2_table_snapshot():
    """kvstore v2's state as captured: v1's snapshot with v2's field names; the table
    points to djb2, which v3 does not have."""
    snapshot = kvstore_v1_snapshot()
    table = snapshot.objects[1].value
    assert isinstance(table, StructValue)
    table.fields["nentries"] = table.fields.pop("count")
    assert table.fields["hash"] == Pointer(table.fields["hash"].addr, FunctionRef("djb2"))
    return snapshot


def test_kvstore_v2_v3_is_refused_before_the_exec_without_its_transformer() -> None:
    """v3 hashes with fnv1a: the plan notes djb2 is gone, and the captured table, whose
    `hash` points to djb2, is refused by the snapshot check made before the exec."""
    update = plan("kvstore", "v2", "v3")
    assert update.ok  # types alone map: only values say that a pointer leads to djb2
    assert actions(update)["table"] == "transfer"
    assert update.type_notes["functions"] == ["gone in v2 (pointers to them fail): djb2"]
    assert check_snapshot(update, v2_table_snapshot()) == [
        "table->#1.hash points to djb2, which v2 does not have"
    ]


def test_kvstore_v2_v3_transformer_rebuilds_the_table_and_clears_the_refusal() -> None:
    update = plan("kvstore", "v2", "v3", "xform_v2_v3.py")
    assert update.ok
    assert actions(update)["table"] == "transformer"
    assert all(a == "transfer" for k, a in actions(update).items() if k != "table")
    assert check_snapshot(update, v2_table_snapshot()) == []


def test_counter_tag_added_in_v2_and_dropped_on_the_way_back() -> None:
    forward = plan("counter", "v1", "v2")
    assert actions(forward) == {
        "handle_client:in": "transfer",
        "main:client_fd": "transfer",
        "main:listen_fd": "transfer",
        "main:nclients": "transfer",
        "main:nlines": "initialised by v2",
    }
    nlines = forward.for_key("main:nlines")
    assert nlines is not None and nlines.old is None and nlines.new is not None
    back = plan("counter", "v2", "v1")
    assert actions(back)["main:nlines"] == "dropped"
    dropped = back.for_key("main:nlines")
    assert dropped is not None and dropped.notes == ["v2 has no such tagged variable"]
    assert [d.what for d in back.unacknowledged] == ["main:nlines"]
    assert forward.ok and back.ok and forward.drops == []


@pytest.mark.parametrize(
    ("name", "version"), [("kvstore", "v1"), ("counter", "v2"), ("ftpd", "v3")]
)
def test_identity_plan_has_no_problems_and_no_notes(name: str, version: str) -> None:
    update = plan(name, version, version)
    assert update.problems == [] and update.type_notes == {}
    assert set(actions(update).values()) == {"transfer"}
    assert all(v.notes == [] and v.old is not None for v in update.variables)
    assert [v.key for v in update.variables] == [t.key for t in program(name, version).tags]


def test_a_cached_plan_is_the_plan_computed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second plan_update of a pair reads the plan back from the on-disk cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    old = Program(fixture_binary("kvstore", "v1"))
    new = Program(fixture_binary("kvstore", "v2"))
    computed = plan_json(plan_update(old, new, Transformers()))
    assert list((tmp_path / "ekiden-trace").glob("*-plan.json")), "the plan was not cached"
    assert plan_json(plan_update(old, new, Transformers())) == computed


# -- blocking problems, on a pair built here ------------------------------------

PAIR = """
    #include "ekiden.h"
    enum colour {{ {enumerators} }};
    struct pair {{ int a; {b} b; }};
    struct ops {{ {handler}; }};
    int twice(int x) {{ return 2 * x; }}
    enum colour colour;
    struct pair pair;
    struct ops ops = {{ twice }};
    int main(void) {{
        (void)EKIDEN_TAG(colour);
        (void)EKIDEN_TAG(pair);
        (void)EKIDEN_TAG(ops);
        for (;;) {{ EKIDEN_UPDATE_POINT(top); }}
    }}
"""


@pytest.fixture(scope="module")
def changed_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Program, Program]:
    """v1 and a v2 that removes an enumerator, turns an int field into a double and a
    function pointer into a data pointer: nothing of it converts by itself."""
    folder = tmp_path_factory.mktemp("pair")
    built = []
    for name, enumerators, b, handler in (
        ("old", "RED, GREEN, BLUE", "int", "int (*handler)(int)"),
        ("new", "RED, GREEN", "double", "int *handler"),
    ):
        source = folder / f"{name}.c"
        source.write_text(
            textwrap.dedent(PAIR.format(enumerators=enumerators, b=b, handler=handler))
        )
        built.append(Program(compile_marked(source, folder / name, "-g", "-O2")))
    return built[0], built[1]


def xform_file(folder: Path, body: str) -> Transformers:
    path = folder / "xform.py"
    path.write_text(
        "from ekiden_trace.xform import field, type_, variable\n\n" + textwrap.dedent(body)
    )
    return load_transformers(str(path))


def test_incompatible_types_block_the_update_with_their_paths(
    changed_pair: tuple[Program, Program],
) -> None:
    update = plan_update(*changed_pair, Transformers())
    assert not update.ok
    assert update.problems == [
        "colour: enumerators BLUE of enum colour are gone in v2; give a transformer",
        "ops.handler: a function pointer became a data pointer; give a transformer",
        "pair.b: int became double; give a transformer",
    ]
    by_key = {v.key: v.problems for v in update.variables}
    assert by_key["pair"] == ["pair.b: int became double; give a transformer"]


def test_type_and_variable_transformers_clear_the_problems(
    changed_pair: tuple[Program, Program], tmp_path: Path
) -> None:
    transformers = xform_file(
        tmp_path,
        """
        @type_("enum colour")
        def colour(old, ctx):
            return "GREEN" if old == "BLUE" else old

        @type_("struct pair")
        def pair(old, ctx):
            return {"a": old.a, "b": float(old.b)}

        @variable("ops")
        def ops(old, ctx):
            return {"handler": None}
        """,
    )
    update = plan_update(*changed_pair, transformers)
    assert update.ok, update.problems
    assert update.type_notes["enum colour"] == ["converted by a type transformer"]
    assert actions(update) == {"colour": "transfer", "ops": "transformer", "pair": "transfer"}


def test_field_transformer_clears_a_retyped_field(
    changed_pair: tuple[Program, Program], tmp_path: Path
) -> None:
    transformers = xform_file(
        tmp_path,
        """
        @field("struct pair", "b")
        def b(old, ctx):
            return float(old.b)
        """,
    )
    update = plan_update(*changed_pair, transformers)
    assert not any(p.startswith("pair.b") for p in update.problems)
    assert "field b set by a transformer" in update.type_notes["struct pair"]


def test_kvstore_snapshot_helper_matches_v1s_types() -> None:
    """The hand-built snapshot the unit tests share names only fields v1 has."""
    types = kvstore("v1").index.types
    snapshot = kvstore_v1_snapshot()
    for obj in snapshot.objects.values():
        assert obj.type_id in types, obj.type_name
        if isinstance(obj.value, StructValue):
            members = [m.name for m in types[obj.type_id].members]
            assert list(obj.value.fields) == members
    assert [v.key for v in snapshot.variables] == [t.key for t in kvstore("v1").tags]


# -- shortened arrays, on a pair built here -------------------------------------

ARRAYS = """
    #include "ekiden.h"
    struct s {{ int {ring}[{n}]; int kept[{n}]; int grown[{grown}]; }};
    struct s s;
    int grid[4][{n}];
    int main(void) {{
        (void)EKIDEN_TAG(s);
        (void)EKIDEN_TAG(grid);
        for (;;) {{ EKIDEN_UPDATE_POINT(top); }}
    }}
"""


def test_shortened_arrays_are_drops_wherever_they_stand(tmp_path: Path) -> None:
    """An inner dimension, a renamed field and a field a transformer sets: only what is
    converted automatically and shorter loses a tail; a grown array loses nothing."""
    built = []
    for name, ring, n, grown in (("old", "ring", 8, 2), ("new", "slots", 2, 4)):
        source = tmp_path / f"{name}.c"
        source.write_text(textwrap.dedent(ARRAYS.format(ring=ring, n=n, grown=grown)))
        built.append(Program(compile_marked(source, tmp_path / name, "-g", "-O2")))
    transformers = xform_file(
        tmp_path,
        """\
        from ekiden_trace.xform import rename

        rename("struct s", "ring", "slots")

        @field("struct s", "kept")
        def kept(old, ctx):
            return [old.kept[6], old.kept[7]]
        """,
    )
    update = plan_update(*built, transformers)
    assert sorted(d.what for d in update.drops) == [
        "elements 2..7 of struct s.ring",
        "elements [0..3][2..7] of grid",
    ]
    assert all(not d.acknowledged for d in update.drops)
