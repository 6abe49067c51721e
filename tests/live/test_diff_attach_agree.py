"""What `diff` says an update will do is what `attach` does, on every fixture pair.

Each v1 runs idle at its loop head; the update's JSON report is compared with
the JSON plan of the same pair and transformer file:
- every variable the plan carries (transfer, transformer) is moved, or is a
  local of a function v1 was not running (the report names those);
- what the report says the new version initialised, the plan said it would;
- what the report says was dropped is exactly what the plan's drops list.
(ftpd's pairs have tests of their own with a forking server and real FTP clients.)
"""

from __future__ import annotations

import json

import pytest
from clients import fixture_binary, start_server
from conftest import REPO, needs_ptrace, run_tool

pytestmark = needs_ptrace

PAIRS = [
    ("counter", "v1", "v2", None, ()),
    ("kvstore", "v1", "v2", "xform_v1_v2.py", ()),
    ("kvstore", "v2", "v3", "xform_v2_v3.py", ()),
    ("kvstore", "v3", "v1", "xform_v3_v1.py", ()),
    ("kvstore", "v2", "v1", "xform_v2_v1.py", ()),
    ("session", "v1", "v2", None, ()),
    ("deep", "v1", "v2", None, ("1000",)),
    ("interior", "v1", "v2", None, ()),
    ("reaper", "v1", "v2", None, ()),
    ("rename", "v1", "v2", "xform_v1_v2.py", ()),
    ("hints", "v1", "v2", None, ()),
    ("retry", "v1", "v2", None, ()),
    ("shrink", "v1", "v2", "xform_v1_v2.py", ()),
    ("behind", "v1", "v2", "xform_v1_v2.py", ()),
    ("units", "v1", "v2", None, ()),
]


def tool_json(*args: str) -> dict:
    """Run the tool, require exit 0 and no traceback, and parse its JSON."""
    result = run_tool(*args, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("fixture", "old", "new", "xform", "args"), PAIRS, ids=[f"{p[0]}-{p[1]}-{p[2]}" for p in PAIRS]
)
def test_attach_does_what_diff_said(
    fixture: str, old: str, new: str, xform: str | None, args: tuple[str, ...]
) -> None:
    v1, v2 = fixture_binary(fixture, old), fixture_binary(fixture, new)
    with_xform = ("--xform", str(REPO / "fixtures" / fixture / xform)) if xform else ()
    plan = tool_json("diff", str(v1), str(v2), "--json", *with_xform)
    carried = {v["key"] for v in plan["variables"] if v["action"] in ("transfer", "transformer")}
    initialised = {v["key"] for v in plan["variables"] if v["action"] == "initialised by v2"}
    drops = {d["what"] for d in plan["drops"]}

    with start_server(v1, *args) as server:
        report = tool_json("attach", str(server.pid), "--new", str(v2), "--json", *with_xform)
        assert server.alive()
    assert report["outcome"] == "updated"
    moved, inactive = set(report["moved"]), set(report["inactive"])
    assert moved | inactive == carried, (report["moved"], report["inactive"])
    assert not moved & inactive
    assert set(report["initialised"]) <= initialised
    assert set(report["dropped"]) == drops
