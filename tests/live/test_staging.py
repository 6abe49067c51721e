"""Staging in a chrooted process's root (target.staging): the new version, its loader
and its libraries in a private root-owned directory, loadable from inside that root, and
removed without a trace; a root nothing can be made in is refused."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from clients import fixture_binary
from conftest import needs_ptrace
from ftp_helpers import children, login, make_root, running_ftpd, wait_until

from ekiden_trace.target.staging import StagingRefused, stage, unstage

pytestmark = needs_ptrace


@pytest.fixture(autouse=True)
def chrooted_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTPD_CHROOT_SESSIONS", "1")


def chrooted_child(listener: int) -> int:
    wait_until(lambda: len(children(listener)) == 1, "one session")
    [privileged] = children(listener)
    wait_until(lambda: len(children(privileged)) == 1, "its chrooted child")
    return children(privileged)[0]


def test_staged_version_loads_inside_the_root_and_leaves_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    with running_ftpd("v1", root) as server:
        ftp = login(server.port)
        child = chrooted_child(server.pid)
        new = str(fixture_binary("ftpd", "v2"))
        staged = stage(child, [(new, "v2")])
        try:
            directory = root / staged.name
            info = directory.stat()
            assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o555
            assert sorted(os.listdir(directory)) == ["ld", "libc.so.6", "v2"]
            listed = subprocess.run(
                ["chroot", str(root), f"/{staged.name}/ld", "--list", staged.path(new)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert f"libc.so.6 => /{staged.name}/libc.so.6" in listed
            assert staged.bytes > 0
        finally:
            unstage(staged.root_fd, staged.name)
            os.close(staged.root_fd)
        assert [e for e in os.listdir(root) if e.startswith(".ek-")] == []
        ftp.quit()


def test_an_immutable_root_is_refused_and_left_untouched(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    with running_ftpd("v1", root) as server:
        ftp = login(server.port)
        child = chrooted_child(server.pid)
        before = sorted(os.listdir(root))
        subprocess.run(["chattr", "+i", str(root)], check=True)
        try:
            with pytest.raises(StagingRefused, match="cannot be staged there"):
                stage(child, [(str(fixture_binary("ftpd", "v2")), "v2")])
        finally:
            subprocess.run(["chattr", "-i", str(root)], check=True)
        assert sorted(os.listdir(root)) == before
        ftp.quit()
