"""Every tagged value arrives, or the update is refused before the exec (issue 11)."""

from __future__ import annotations

from clients import LineClient, fixture_binary, start_server
from conftest import needs_ptrace, run_tool

pytestmark = needs_ptrace


def test_new_fields_of_a_tagged_local_keep_v2s_initial_values() -> None:
    """session v2's initialiser sets log_fd = -1 and max_line = 64 in a local struct; after
    an update from v1 they hold those values (as `diff` says), not zeros."""
    v1, v2 = fixture_binary("session", "v1"), fixture_binary("session", "v2")
    plan = run_tool("diff", str(v1), str(v2))
    assert plan.returncode == 0, plan.stderr
    assert "field log_fd added (keeps v2's initial value)" in plan.stdout
    assert "field max_line added (keeps v2's initial value)" in plan.stdout
    with start_server(v1) as server, LineClient(server.port) as client:
        assert client.command("USER alice") == "v1 hello alice"
        assert client.command("INFO") == "v1 requests=2 user=alice"
        result = run_tool("attach", str(server.pid), "--new", str(v2))
        assert result.returncode == 0, result.stderr
        assert client.command("INFO") == "v2 requests=3 user=alice log_fd=-1 max_line=64"
        assert client.command("x" * 65) == "v2 ERR request longer than 64"
