"""`attach --tree` on the forking FTP server: the listener and each session update on their own."""

from __future__ import annotations

import ftplib
import io
import json
import threading
import time
from pathlib import Path

import pytest
from clients import fixture_binary
from conftest import REPO, needs_ptrace, run_tool, tool_json
from ftp_helpers import connect, login, make_root, running_ftpd, wait_until

pytestmark = needs_ptrace

XFORM_V3 = REPO / "fixtures" / "ftpd" / "xform_v2_v3.py"


def attach_tree(pid: int, version: str, *extra: str) -> dict:
    result = run_tool(
        "attach",
        str(pid),
        "--new",
        str(fixture_binary("ftpd", version)),
        "--tree",
        "--json",
        *extra,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    tree = json.loads(result.stdout)
    assert all(p["outcome"] == "updated" for p in tree["processes"]), tree
    return tree


def listener_counts(pid: int) -> tuple[int, int, int]:
    """(num_children, entries of pid_to_addr, entries of addr_to_count), read by inspect."""
    snapshot = tool_json("inspect", "--timeout", "2", str(pid))
    found = {v["name"]: v["value"] for v in snapshot["variables"]}

    def entries(pointer: dict | None) -> int:
        if pointer is None:
            return 0
        table = snapshot["objects"][str(pointer["ref"])]["value"]["fields"]
        count = 0
        for head in snapshot["objects"][str(table["buckets"]["ref"])]["value"]:
            node = head
            while node is not None:
                count += 1
                node = snapshot["objects"][str(node["ref"])]["value"]["fields"]["next"]
        return count

    return found["num_children"], entries(found["pid_to_addr"]), entries(found["addr_to_count"])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path)


def test_logged_in_session_keeps_cwd_type_and_rest(root: Path) -> None:
    payload = (root / "pub" / "big.bin").read_bytes()
    with running_ftpd("v1", root) as server:
        ftp = login(server.port)
        ftp.cwd("/pub")
        ftp.voidcmd("TYPE I")
        ftp.sendcmd("REST 1000")
        tree = attach_tree(server.pid, "v2")
        assert len(tree["processes"]) == 2  # the session, then the listener
        assert [p["pid"] for p in tree["processes"]][-1] == server.pid
        assert ftp.pwd() == "/pub"
        assert "211" in ftp.sendcmd("FEAT")  # v2 only
        received = io.BytesIO()
        ftp.retrbinary("RETR big.bin", received.write)  # TYPE I and REST 1000 carried over
        assert received.getvalue() == payload[1000:]
        ftp.quit()


def test_prelogin_session_updates_then_logs_in(root: Path) -> None:
    with running_ftpd("v1", root) as server:
        ftp = connect(server.port)
        wait_until(lambda: len(server.sessions()) == 1, "one session")
        tree = attach_tree(server.pid, "v2")
        assert tree["processes"][0]["report"]["point"] == "prelogin_loop"
        ftp.login()  # no second greeting is waiting in the connection
        assert ftp.pwd() == "/"
        assert "211" in ftp.sendcmd("FEAT")
        ftp.quit()


def test_download_in_progress_finishes_then_the_session_updates(root: Path) -> None:
    big = root / "pub" / "big.bin"
    with running_ftpd("v1", root) as server:
        ftp = login(server.port)
        ftp.voidcmd("TYPE I")
        received = io.BytesIO()

        def slow(block: bytes) -> None:
            received.write(block)
            time.sleep(0.0005)

        download = threading.Thread(target=ftp.retrbinary, args=("RETR pub/big.bin", slow))
        download.start()
        time.sleep(0.2)
        attach_tree(server.pid, "v2", "--timeout", "30")
        download.join(timeout=60)
        assert received.getvalue() == big.read_bytes()
        assert "211" in ftp.sendcmd("FEAT")
        ftp.quit()


def test_listener_update_keeps_its_tables_true(root: Path) -> None:
    with running_ftpd("v1", root, max_per_ip=5) as server:
        sessions = [login(server.port) for _ in range(5)]
        wait_until(lambda: len(server.sessions()) == 5, "five sessions")
        result = run_tool("attach", str(server.pid), "--new", str(fixture_binary("ftpd", "v2")))
        assert result.returncode == 0, result.stderr
        assert listener_counts(server.pid) == (5, 5, 1)
        with pytest.raises(ftplib.error_temp, match=r"^421"):
            connect(server.port)  # the sixth from the same address
        for ftp in sessions:
            ftp.quit()
        wait_until(lambda: listener_counts(server.pid) == (0, 0, 0), "the counts back to zero")
        fresh = login(server.port)
        assert "211" in fresh.sendcmd("FEAT")  # a new session is a fork of v2
        fresh.quit()


def test_chain_v1_v2_v3_with_sessions_connected(root: Path) -> None:
    with running_ftpd("v1", root, max_per_ip=3) as server:
        first, second = login(server.port), connect(server.port)
        attach_tree(server.pid, "v2")
        attach_tree(server.pid, "v3", "--xform", str(XFORM_V3))
        assert "211" in first.sendcmd("FEAT")
        second.login()
        assert second.pwd() == "/"
        third = login(server.port)
        with pytest.raises(ftplib.error_temp, match=r"^421"):
            connect(server.port)  # a 4th from one address: the rehashed count still holds
        for ftp in (first, second, third):
            ftp.quit()
        wait_until(lambda: listener_counts(server.pid) == (0, 0, 0), "the counts back to zero")


def test_idle_processes_update_within_one_second(root: Path) -> None:
    with running_ftpd("v1", root) as server:
        idle = login(server.port)
        wait_until(lambda: len(server.sessions()) == 1, "one session")
        # Nobody talks: the session blocks reading its control connection, the listener in
        # its accept loop.  --timeout 1 fails unless each reaches its point within 1 s.
        attach_tree(server.pid, "v2", "--timeout", "1")
        assert "211" in idle.sendcmd("FEAT")
        idle.quit()


def test_partial_failure_is_reported_and_the_rest_updates(root: Path) -> None:
    with running_ftpd("v1", root) as server:
        ftp = login(server.port)
        wait_until(lambda: len(server.sessions()) == 1, "one session")
        result = run_tool(
            "attach",
            str(server.pid),
            "--new",
            str(fixture_binary("ftpd", "v2")),
            "--tree",
            env={"EKIDEN_TRACE_FAULT": "restore-write"},  # the first process (the session) fails
        )
        assert result.returncode == 12, result.stderr
        assert "1 of 2 processes updated" in result.stdout
        assert "rolled back" in result.stdout and "fault was injected" in result.stdout
        assert result.stderr == "ekiden-trace: 1 of 2 processes were not updated.\n"
        with pytest.raises(ftplib.error_perm, match=r"^502"):
            ftp.sendcmd("FEAT")  # the session still runs v1
        fresh = login(server.port)
        assert "211" in fresh.sendcmd("FEAT")  # the listener runs v2
        fresh.quit()
        ftp.quit()
