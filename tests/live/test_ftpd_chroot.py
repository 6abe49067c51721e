"""The FTP server in vsftpd's default process model: each session a privileged process
and its child, chrooted into the served root as user nobody.  A chrooted child cannot
exec the new version (neither it nor its loader is inside its root): `--tree` says so per
process and refuses before touching anything, or, with --leave-unupdatable, updates the
others and leaves it on its old version until its client leaves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from clients import fixture_binary
from conftest import needs_ptrace, run_tool
from ftp_helpers import children, connect, login, make_root, running_ftpd, wait_until

pytestmark = needs_ptrace


@pytest.fixture(autouse=True)
def chrooted_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTPD_CHROOT_SESSIONS", "1")


def running(pid: int) -> str:
    """The fixture version a process runs (v1, v2...)."""
    return os.path.basename(os.path.realpath(f"/proc/{pid}/exe"))


def session_pair(listener: int) -> tuple[int, int]:
    """(privileged process, chrooted child) of the listener's one session."""
    wait_until(lambda: len(children(listener)) == 1, "one session")
    [privileged] = children(listener)
    wait_until(lambda: len(children(privileged)) == 1, "its chrooted child")
    [child] = children(privileged)
    return privileged, child


def test_tree_names_the_chrooted_process_and_touches_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    with running_ftpd("v1", root) as server:
        ftp = connect(server.port)  # before login: the child is chrooted already
        privileged, child = session_pair(server.pid)
        assert os.readlink(f"/proc/{child}/root") == str(root)
        new = str(fixture_binary("ftpd", "v2"))
        result = run_tool("attach", str(server.pid), "--tree", "--new", new)
        assert result.returncode == 3 and "Traceback" not in result.stderr
        assert f"process {child} cannot see" in result.stderr
        assert "--leave-unupdatable" in result.stderr
        assert {running(p) for p in (server.pid, privileged, child)} == {"v1"}
        ftp.login()
        assert ftp.nlst("pub") == ["big.bin", "docs", "small.txt"]
        ftp.quit()


def test_leave_unupdatable_updates_the_others(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    with running_ftpd("v1", root) as server:
        ftp = login(server.port)  # after login, chrooted, as nobody
        privileged, child = session_pair(server.pid)
        assert os.stat(f"/proc/{child}").st_uid == 65534
        result = run_tool(
            "attach",
            str(server.pid),
            "--tree",
            "--leave-unupdatable",
            "--json",
            "--new",
            str(fixture_binary("ftpd", "v2")),
        )
        assert result.returncode == 0, result.stderr
        outcomes = {p["pid"]: p["outcome"] for p in json.loads(result.stdout)["processes"]}
        assert outcomes == {child: "left", privileged: "updated", server.pid: "updated"}
        assert running(child) == "v1" and running(privileged) == "v2"
        assert running(server.pid) == "v2"
        assert "ftpd version 1" in ftp.sendcmd("STAT")  # the session runs on, on v1
        assert ftp.nlst("pub") == ["big.bin", "docs", "small.txt"]
        newcomer = connect(server.port)
        assert newcomer.getwelcome() == "220 ftpd v2 ready."
        newcomer.quit()
        ftp.quit()
        wait_until(lambda: not os.path.exists(f"/proc/{privileged}/exe"), "the session ended")


def test_leave_unupdatable_goes_with_tree() -> None:
    result = run_tool("attach", "1", "--new", "/bin/true", "--leave-unupdatable")
    assert result.returncode == 64 and "--leave-unupdatable goes with --tree" in result.stderr
