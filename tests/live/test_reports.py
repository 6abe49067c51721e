"""Every figure of an update report is what happened (issue 11, item 10)."""

from __future__ import annotations

import json
from pathlib import Path

from clients import KvClient, fixture_binary, start_server
from conftest import REPO, needs_ptrace, run_tool
from ftp_helpers import login, make_root, running_ftpd, wait_until

pytestmark = needs_ptrace

KVSTORE = REPO / "fixtures" / "kvstore"


def test_objects_built_by_transformers_are_counted() -> None:
    """v3 -> v1 lays out v1's table with ctx.new/ctx.array/ctx.string (all counted); v2 -> v3
    builds it with v3's own table_new and table_put, which the report counts as calls."""
    with start_server(fixture_binary("kvstore", "v2")) as server, KvClient(server.port) as client:
        for i in range(10):
            client.set(f"k{i}", f"v{i}")
        v3 = str(fixture_binary("kvstore", "v3"))
        xform = str(KVSTORE / "xform_v2_v3.py")
        result = run_tool("attach", str(server.pid), "--new", v3, "--xform", xform, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["calls"] == 1 + 10  # table_new, then table_put each
        v1 = str(fixture_binary("kvstore", "v1"))
        xform = str(KVSTORE / "xform_v3_v1.py")
        result = run_tool("attach", str(server.pid), "--new", v1, "--xform", xform)
        assert result.returncode == 0, result.stderr
        # Per entry: the entry, its key and its value; then the bucket array and the table.
        assert ", 32 heap objects," in result.stdout
        assert client.get("k9") == "v9"


def test_a_downgrade_names_the_versions_by_their_binaries() -> None:
    with start_server(fixture_binary("kvstore", "v3")) as server, KvClient(server.port) as client:
        client.set("k", "v")
        v1 = str(fixture_binary("kvstore", "v1"))
        xform = str(KVSTORE / "xform_v3_v1.py")
        result = run_tool("attach", str(server.pid), "--new", v1, "--xform", xform)
        assert result.returncode == 0, result.stderr
        assert "v2" not in result.stdout, result.stdout
        assert "until v1 ran free" in result.stdout and "moved into v1:" in result.stdout
        assert "histogram added (keeps v1's initial value)" in result.stdout


def test_a_rolled_back_update_reports_its_pause() -> None:
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.set("kept", "yes")
        crash = str(fixture_binary("faulty", "v2-crash"))
        allow = "--allow-drop"  # v1 -> v2 drops state; not what is tested here
        result = run_tool("attach", str(server.pid), "--new", crash, allow, "--json")
        assert result.returncode == 11, result.stderr
        report = json.loads(result.stdout)
        assert report["outcome"] == "rolled back"
        phases = report["phases"]
        assert {"exec", "restore", "rollback"} <= set(phases)
        after_stop = phases["capture"] + phases["exec"] + phases["restore"] + phases["rollback"]
        assert after_stop <= report["pause"] + 1e-3
        assert "table" in report["moved"]  # v1's own state, restored
        text = run_tool("attach", str(server.pid), "--new", crash, allow)
        assert "pause: 0.00 ms" not in text.stdout
        assert "until v1 ran free, rolled back" in text.stdout
        assert "restored into v1: 7 variables" in text.stdout
        assert client.get("kept") == "yes"


def test_tree_errors_are_printed_once(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    with running_ftpd("v1", root) as server:
        ftp = login(server.port)
        wait_until(lambda: len(server.sessions()) == 1, "one session")
        session = server.sessions()[0]
        # Neither the listener nor the session (logged in) reaches prelogin_loop.
        result = run_tool(
            "attach", str(server.pid), "--new", str(fixture_binary("ftpd", "v2")),
            "--tree", "--point", "prelogin_loop", "--timeout", "0.5",
        )  # fmt: skip
        assert result.returncode == 12, result.stderr
        output = result.stdout + result.stderr
        assert "Traceback" not in output
        for pid in (server.pid, session):
            assert f"process {pid}: process {pid}" not in output
            assert output.count(f"process {pid}:") == 1, output
        assert output.count("did not reach update point prelogin_loop") == 2, output
        assert result.stderr == "ekiden-trace: 2 of 2 processes were not updated.\n"
        ftp.quit()
