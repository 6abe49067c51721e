"""Two compilation units with the same basename keep their own identity.

fixtures/units links a/util.c and b/util.c, each compiled in its own folder, so DWARF
and the ELF's FILE symbols call both `util.c`.  Each has a tagged file static `counter`
and a file-local `ticket()` with a tagged `static int n`; the tagged global `last`
points to one unit's counter.  Their keys name the unit by its path relative to the
folder the two share (`a/util.c:counter`, `b/util.c:ticket:n`): all four are listed
and carried, each to its own unit, and `last` to the same unit's counter in v2.
"""

from __future__ import annotations

import json

from clients import LineClient, fixture_binary, start_server
from conftest import needs_ptrace, run_tool, tool_json

V1, V2 = fixture_binary("units", "v1"), fixture_binary("units", "v2")
STATICS = ["a/util.c:counter", "a/util.c:ticket:n", "b/util.c:counter", "b/util.c:ticket:n"]


def test_points_and_diff_list_the_statics_of_both_units() -> None:
    keys = [t["key"] for t in tool_json("points", str(V1))["tags"]]
    assert sorted(k for k in keys if "util.c" in k) == STATICS
    plan = tool_json("diff", str(V1), str(V2))
    carried = {v["key"] for v in plan["variables"] if v["action"] == "transfer"}
    assert set(STATICS) <= carried
    assert plan["drops"] == []


@needs_ptrace
def test_each_unit_keeps_its_statics_and_the_pointer_its_unit() -> None:
    with start_server(V1) as server, LineClient(server.port) as client:
        assert client.command("A") == "v1 a=101"
        assert client.command("A") == "v1 a=102"
        assert client.command("B") == "v1 b=201"  # last points to b's counter
        assert client.command("SHOW") == "v1 a=102/102 b=201/201 last=201"
        result = run_tool("attach", str(server.pid), "--new", str(V2), "--json")
        assert "Traceback" not in result.stderr
        assert result.returncode == 0, result.stderr + result.stdout
        assert set(STATICS) <= set(json.loads(result.stdout)["moved"])
        assert client.command("SHOW") == "v2 a=102/102 b=201/201 last=201"
        # last still points to b's counter: bumping b moves it, bumping a does not
        assert client.command("B") == "v2 b=202"
        assert client.command("SHOW") == "v2 a=102/102 b=202/202 last=202"
