"""The FTP server in vsftpd's default process model: each session a privileged process
and its child, chrooted into the served root as user nobody.  A chrooted child sees
neither the new version nor its loader: the update stages them (and v1, for a rollback)
in a private directory of its root and removes it when done.  Where nothing can be staged
(an immutable or read-only root), `--tree` says so per process and refuses before
touching anything, or, with --leave-unupdatable, updates the others and leaves it on its
old version until its client leaves."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import fixture_binary
from conftest import needs_ptrace, run_tool
from ftp_helpers import (
    USERS,
    children,
    connect,
    login,
    make_root,
    running_ftpd,
    wait_until,
    write_userfile,
)

pytestmark = needs_ptrace


@pytest.fixture(autouse=True)
def chrooted_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTPD_CHROOT_SESSIONS", "1")


def running(pid: int) -> str:
    """The fixture version a process runs (v1, v2...), staged copies included."""
    return os.path.basename(os.readlink(f"/proc/{pid}/exe")).removesuffix(" (deleted)")


def staged_left(root: Path) -> list[str]:
    """Staging directories left in the root."""
    return [entry for entry in os.listdir(root) if entry.startswith(".ek-")]


@contextlib.contextmanager
def immutable(root: Path) -> Iterator[None]:
    """The root made immutable (chattr +i): nothing can be staged in it."""
    subprocess.run(["chattr", "+i", str(root)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(root)], check=True)


def session_pair(listener: int) -> tuple[int, int]:
    """(privileged process, chrooted child) of the listener's one session."""
    wait_until(lambda: len(children(listener)) == 1, "one session")
    [privileged] = children(listener)
    wait_until(lambda: len(children(privileged)) == 1, "its chrooted child")
    [child] = children(privileged)
    return privileged, child


def test_tree_names_a_process_whose_root_cannot_be_staged_in(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    with running_ftpd("v1", root) as server:
        ftp = connect(server.port)  # before login: the child is chrooted already
        privileged, child = session_pair(server.pid)
        assert os.readlink(f"/proc/{child}/root") == str(root)
        new = str(fixture_binary("ftpd", "v2"))
        with immutable(root):
            result = run_tool("attach", str(server.pid), "--tree", "--new", new)
        assert result.returncode == 3 and "Traceback" not in result.stderr
        assert f"process {child} cannot see" in result.stderr
        assert "cannot be staged there" in result.stderr
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
        with immutable(root):
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


def test_tree_updates_the_chrooted_session_by_staging(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    with running_ftpd("v1", root) as server:
        ftp = login(server.port)  # after login, chrooted, as nobody
        ftp.cwd("pub")
        privileged, child = session_pair(server.pid)
        new = str(fixture_binary("ftpd", "v2"))
        result = run_tool("attach", str(server.pid), "--tree", "--json", "--new", new)
        assert result.returncode == 0, result.stdout
        outcomes = {p["pid"]: p["outcome"] for p in json.loads(result.stdout)["processes"]}
        assert set(outcomes.values()) == {"updated"} and child in outcomes
        assert {running(p) for p in (server.pid, privileged, child)} == {"v2"}
        assert os.readlink(f"/proc/{child}/root") == str(root)
        assert staged_left(root) == []
        assert "ftpd version 2" in ftp.sendcmd("STAT")  # the same session, on v2
        assert ftp.pwd() == "/pub"
        assert ftp.nlst() == ["big.bin", "docs", "small.txt"]
        ftp.quit()


def test_a_failed_update_rolls_the_chrooted_session_back_inside_its_root(
    tmp_path: Path,
) -> None:
    root = make_root(tmp_path)
    with running_ftpd("v1", root) as server:
        ftp = login(server.port)
        ftp.cwd("pub")
        _, child = session_pair(server.pid)
        new = str(fixture_binary("ftpd", "v2"))
        result = run_tool(
            "attach", str(child), "--new", new, env={"EKIDEN_TRACE_FAULT": "restore-write"}
        )
        assert result.returncode == 11 and "rolled back" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert running(child) == "v1" and staged_left(root) == []
        assert "ftpd version 1" in ftp.sendcmd("STAT")
        assert ftp.pwd() == "/pub"
        ftp.quit()


def test_the_guardian_rolls_back_and_unstages_when_the_tool_dies(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    with running_ftpd("v1", root) as server:
        ftp = login(server.port)
        _, child = session_pair(server.pid)
        new = str(fixture_binary("ftpd", "v2"))
        result = run_tool("attach", str(child), "--new", new, env={"EKIDEN_TRACE_KILL_AT": "exec"})
        assert result.returncode == -9
        wait_until(lambda: staged_left(root) == [], "the guardian removed the staged files")
        assert "ftpd version 1" in ftp.sendcmd("STAT") and running(child) == "v1"
        ftp.quit()


def test_a_session_updated_before_login_keeps_the_accounts(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    userfile = write_userfile(tmp_path / "users")
    with running_ftpd("v1", root, userfile=userfile) as server:
        ftp = connect(server.port)  # chrooted, not logged in: it could not read USERFILE again
        _, child = session_pair(server.pid)
        result = run_tool("attach", str(child), "--new", str(fixture_binary("ftpd", "v2")))
        assert result.returncode == 0, result.stderr
        assert "staged in its root (chrooted)" in result.stdout
        assert running(child) == "v2" and staged_left(root) == []
        ftp.login("alice", USERS["alice"])
        assert "ftpd version 2" in ftp.sendcmd("STAT")
        ftp.quit()
