"""A target that could not exec the new binary itself is refused before the pause; a
chrooted one has it staged in its root, unless nothing can be staged there."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from clients import KvClient, code_bytes, fixture_binary, free_port
from conftest import needs_ptrace, run_tool

pytestmark = needs_ptrace


def start(argv: list[str], port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == f"listening on {port}"
    return proc


def refused(pid: int, new: Path, words: str) -> None:
    before = code_bytes(pid)
    # --allow-drop: kvstore v1 -> v2 drops state, and the refusal tested here comes after
    result = run_tool("attach", str(pid), "--new", str(new), "--allow-drop")
    assert result.returncode == 3, result.stderr
    assert words in result.stderr
    assert code_bytes(pid) == before


def jailed_kvstore(tmp_path: Path) -> tuple[Path, int, subprocess.Popen[str]]:
    """kvstore v1 chrooted into tmp_path/jail, with its loader and libraries."""
    root = tmp_path / "jail"
    binary = fixture_binary("kvstore", "v1")
    libs = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    for path in (word for word in libs.split() if word.startswith("/")):
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    shutil.copy(binary, root / "kvstore")
    port = free_port()
    return root, port, start(["chroot", str(root), "/kvstore", str(port)], port)


def test_chrooted_target_is_updated_through_its_root(tmp_path: Path) -> None:
    root, port, proc = jailed_kvstore(tmp_path)
    try:
        with KvClient(port) as client:
            client.set("still", "here")
        new = fixture_binary("kvstore", "v2")
        result = run_tool("attach", str(proc.pid), "--new", str(new), "--allow-drop")
        assert result.returncode == 0, result.stderr
        assert "staged in its root (chrooted)" in result.stdout
        assert not [entry for entry in os.listdir(root) if entry.startswith(".ek-")]
        with KvClient(port) as client:
            assert client.stats()["version"] == 2 and client.get("still") == "here"
    finally:
        proc.kill()
        proc.wait()


def test_chrooted_target_whose_root_cannot_be_staged_in(tmp_path: Path) -> None:
    root, port, proc = jailed_kvstore(tmp_path)
    subprocess.run(["chattr", "+i", str(root)], check=True)
    try:
        refused(proc.pid, fixture_binary("kvstore", "v2"), "cannot be staged there")
        with KvClient(port) as client:
            client.set("still", "here")
            assert client.stats()["version"] == 1
    finally:
        subprocess.run(["chattr", "-i", str(root)], check=True)
        proc.kill()
        proc.wait()


def test_target_user_may_not_execute_the_new_binary(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the target as another user")
    tmp_path.chmod(0o755)
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    shutil.copy(fixture_binary("kvstore", "v1"), v1)
    shutil.copy(fixture_binary("kvstore", "v2"), v2)
    v1.chmod(0o755)
    v2.chmod(0o700)  # root only
    port = free_port()
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(v1), str(port)]
    proc = start(argv, port)
    try:
        refused(proc.pid, v2, "may not execute")
        with KvClient(port) as client:
            assert client.stats()["version"] == 1
    finally:
        proc.kill()
        proc.wait()
