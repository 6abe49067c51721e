"""State lost where no removed variable or field shows it is never silent either.

fixtures/shrink: v2 shortens the tagged global `int recent[8]` to 4 elements, and
struct stats's `int slots[8]` and `char name[16]` to 4 and 8: the tails are drops.
fixtures/behind: v2's struct blob and struct note lose a field each, and only hinted
`void *` pointers reach them (EKIDEN_HINT_POINTS_TO, EKIDEN_HINT_VAR_POINTS_TO).
`diff` lists each and exits 9; `attach` refuses (exit 9, v1 serving on) unless the
transformer file acknowledges each or --allow-drop is given, and then drops what
`diff` said.
"""

from __future__ import annotations

import json

import pytest
from clients import LineClient, fixture_binary, start_server
from conftest import REPO, needs_ptrace, run_tool

pytestmark = needs_ptrace

CUTS = [
    "elements 4..7 of recent",
    "elements 4..7 of struct stats.slots",
    "chars 8..15 of struct stats.name",
]
BEHIND = ["struct blob.debug", "struct note.weight"]
SLOTS = 'elements 4..7 of struct stats.slots (int [8] -> int [4]): drop("struct stats", "slots")'


def xform(fixture: str) -> str:
    return str(REPO / "fixtures" / fixture / "xform_v1_v2.py")


@pytest.mark.parametrize(("fixture", "drops"), [("shrink", CUTS), ("behind", BEHIND)])
def test_diff_lists_the_drop_and_exits_9(fixture: str, drops: list[str]) -> None:
    v1, v2 = fixture_binary(fixture, "v1"), fixture_binary(fixture, "v2")
    result = run_tool("diff", str(v1), str(v2))
    assert "Traceback" not in result.stderr
    assert result.returncode == 9, result.stderr + result.stdout
    listed = result.stdout.split("dropped (old state the update throws away):")[1]
    for what in drops:
        assert what in listed
    acknowledged = run_tool("diff", str(v1), str(v2), "--xform", xform(fixture), "--json")
    assert acknowledged.returncode == 0, acknowledged.stderr
    plan = json.loads(acknowledged.stdout)
    assert sorted(d["what"] for d in plan["drops"]) == sorted(drops)
    assert all(d["acknowledged_by"] == "drop" for d in plan["drops"])


def test_diff_shows_the_cut_and_the_line_that_acknowledges_it() -> None:
    result = run_tool(
        "diff", str(fixture_binary("shrink", "v1")), str(fixture_binary("shrink", "v2"))
    )
    assert SLOTS in result.stdout
    assert 'elements 4..7 of recent (int [8] -> int [4]): drop("recent")' in result.stdout


def test_attach_refuses_a_shrunk_array_and_v1_keeps_its_state() -> None:
    v1, v2 = fixture_binary("shrink", "v1"), fixture_binary("shrink", "v2")
    with start_server(v1) as server, LineClient(server.port) as client:
        assert client.command("ADD 7") == "v1 added 7"
        result = run_tool("attach", str(server.pid), "--new", str(v2))
        assert "Traceback" not in result.stderr
        assert result.returncode == 9, result.stderr + result.stdout
        assert "the update would drop old state" in result.stderr
        assert SLOTS in result.stderr
        assert client.command("SHOW") == (
            "v1 served=2 name=none slots=0,7,0,0,0,0,0,0 recent=0,7,0,0,0,0,0,0"
        )


def test_acknowledged_cut_keeps_the_head_of_each_array() -> None:
    v1, v2 = fixture_binary("shrink", "v1"), fixture_binary("shrink", "v2")
    with start_server(v1) as server, LineClient(server.port) as client:
        for n in (11, 12, 13, 14, 15):  # served 1..5: slots 1, 2, 3, 4, 5
            assert client.command(f"ADD {n}") == f"v1 added {n}"
        assert client.command("NAME abcdefghijkl") == "v1 named abcdefghijkl"
        result = run_tool(
            "attach", str(server.pid), "--new", str(v2), "--xform", xform("shrink"), "--json"
        )
        assert result.returncode == 0, result.stderr + result.stdout
        report = json.loads(result.stdout)
        assert sorted(report["dropped"]) == sorted(CUTS)
        # 15 went to slot 5, which v2 does not have; the name keeps its first 8 chars
        assert client.command("SHOW") == (
            "v2 served=7 name=abcdefgh slots=0,11,12,13 recent=0,11,12,13"
        )


def test_attach_refuses_fields_dropped_behind_hinted_void_pointers() -> None:
    v1, v2 = fixture_binary("behind", "v1"), fixture_binary("behind", "v2")
    with start_server(v1) as server, LineClient(server.port) as client:
        assert client.command("BUMP") == "v1 count=1"
        assert client.command("WEIGH 42") == "v1 weight=42"
        result = run_tool("attach", str(server.pid), "--new", str(v2))
        assert "Traceback" not in result.stderr
        assert result.returncode == 9, result.stderr + result.stdout
        assert 'struct blob.debug (unsigned int): drop("struct blob", "debug")' in result.stderr
        assert 'struct note.weight (long): drop("struct note", "weight")' in result.stderr
        assert client.command("SHOW") == "v1 count=1 debug=2 label=box id=1 weight=42"

        result = run_tool("attach", str(server.pid), "--new", str(v2), "--allow-drop", "--json")
        assert result.returncode == 0, result.stderr + result.stdout
        assert sorted(json.loads(result.stdout)["dropped"]) == BEHIND
        assert client.command("SHOW") == "v2 count=1 label=box id=1"
