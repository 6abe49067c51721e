"""Dropped state is never silent: `attach` refuses an update that throws old state away
unless the transformer file acknowledges it (or --allow-drop), and then does what `diff`
said.  fixtures/rename: v2 renames struct stats's `owner` to `user` and main's `client_fd`
to `conn_fd`, and removes `debug_bytes`."""

from __future__ import annotations

import json

from clients import LineClient, fixture_binary, start_server
from conftest import REPO, needs_ptrace, run_tool, tool_json

pytestmark = needs_ptrace

V1, V2 = fixture_binary("rename", "v1"), fixture_binary("rename", "v2")
XFORM = REPO / "fixtures" / "rename" / "xform_v1_v2.py"


def test_unacknowledged_drop_is_refused_and_v1_keeps_serving() -> None:
    with start_server(V1) as server, LineClient(server.port) as client:
        assert client.command("OWNER alice") == "ok"
        result = run_tool("attach", str(server.pid), "--new", str(V2))
        assert result.returncode == 9, result.stderr + result.stdout
        assert "Traceback" not in result.stderr
        assert "the update would drop old state" in result.stderr
        assert 'rename("struct stats", "owner", "user")' in result.stderr
        assert 'drop("struct stats", "debug_bytes")' in result.stderr
        assert client.command("SHOW") == "v1 served 2 owner alice debug 15"


def test_rename_and_drop_in_the_transformer_file_carry_the_state() -> None:
    with start_server(V1) as server, LineClient(server.port) as client:
        assert client.command("OWNER alice") == "ok"
        result = run_tool(
            "attach", str(server.pid), "--new", str(V2), "--xform", str(XFORM), "--json"
        )
        assert result.returncode == 0, result.stderr + result.stdout
        report = json.loads(result.stdout)
        # the renamed local is the connection v2 goes back to; the renamed field keeps alice
        assert client.command("SHOW") == "v2 served 2 user alice"
        assert "main:conn_fd" in report["moved"]
        # what attach dropped is what diff said it would drop
        plan = tool_json("diff", str(V1), str(V2), "--xform", str(XFORM))
        assert report["dropped"] == [d["what"] for d in plan["drops"]]
        assert report["dropped"] == ["struct stats.debug_bytes"]


def test_allow_drop_updates_and_reports_what_was_dropped() -> None:
    with start_server(V1) as server, LineClient(server.port) as client:
        assert client.command("OWNER alice") == "ok"
        result = run_tool("attach", str(server.pid), "--new", str(V2), "--allow-drop", "--json")
        assert result.returncode == 0, result.stderr + result.stdout
        report = json.loads(result.stdout)
        assert report["dropped"] == [
            "main:client_fd",
            "struct stats.owner",
            "struct stats.debug_bytes",
        ]
        # v2 lost the connection (client_fd was dropped); `owner` was dropped, so `user`
        # keeps v2's initial value (empty: stats came over, so v2 did not initialise it)
        with LineClient(server.port) as again:
            assert again.command("SHOW") == "v2 served 2 user "
