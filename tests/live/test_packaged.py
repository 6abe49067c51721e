"""Servers as a package manager installs and upgrades them: a new file renamed over the
path the server runs from (or the path deleted), and then `attach --new` that path."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from clients import CounterClient, KvClient, fixture_binary, start_server
from conftest import (
    REPO,
    needs_ptrace,
    process_state,
    run_tool,
    start_tool,
    tracer_of,
    wait_for_guardians,
)
from distro import build_id, debuginfod, distro_build

pytestmark = needs_ptrace


def install(binary: Path, path: Path) -> None:
    """Install `binary` at `path` as dpkg does: a new file written beside it, renamed over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(path.name + ".dpkg-new")
    shutil.copy2(binary, staged)
    os.rename(staged, path)


def exe_inode(pid: int) -> int:
    """The inode of the image a process runs (deleted or not)."""
    return os.stat(f"/proc/{pid}/exe").st_ino


def open_fds(pid: int) -> set[str]:
    return set(os.listdir(f"/proc/{pid}/fd"))


def settled(pid: int, timeout: float = 30) -> None:
    """Wait until nobody traces the process and it runs (a guardian is done with it)."""
    wait_for_guardians(timeout)
    deadline = time.monotonic() + timeout
    while tracer_of(pid) != 0 or process_state(pid) not in "SR":
        assert time.monotonic() < deadline, f"process {pid} still traced or stopped"
        time.sleep(0.01)


def test_upgrade_renamed_over_the_path_then_attach_to_that_path(tmp_path: Path) -> None:
    path = tmp_path / "usr" / "sbin" / "counterd"
    install(fixture_binary("counter", "v1"), path)
    with start_server(path) as server, CounterClient(server.port) as client:
        assert client.send("one") == "v1 #1 echo: one"
        install(fixture_binary("counter", "v2"), path)  # apt upgrade
        assert os.readlink(f"/proc/{server.pid}/exe") == f"{path} (deleted)"
        fds = open_fds(server.pid)

        inspected = run_tool("inspect", str(server.pid), "--json")
        assert inspected.returncode == 0, inspected.stderr
        assert json.loads(inspected.stdout)["binary"] == f"{path} (deleted)"

        result = run_tool("attach", str(server.pid), "--new", str(path), "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["old"] == f"{path} (deleted)" and report["outcome"] == "updated"
        assert client.send("two") == "v2 #1 echo: two"
        assert os.readlink(f"/proc/{server.pid}/exe") == str(path)
        assert open_fds(server.pid) == fds  # the fd the update held on v1 is closed


def test_deleted_path_then_attach(tmp_path: Path) -> None:
    path = tmp_path / "counterd"
    install(fixture_binary("counter", "v1"), path)
    with start_server(path) as server, CounterClient(server.port) as client:
        assert client.send("one") == "v1 #1 echo: one"
        path.unlink()
        result = run_tool("attach", str(server.pid), "--new", str(fixture_binary("counter", "v2")))
        assert result.returncode == 0, result.stderr
        assert f"{path} (deleted) -> " in result.stdout
        assert client.send("two") == "v2 #1 echo: two"


@pytest.mark.parametrize("change", ["replaced", "deleted"])
def test_rollback_execs_the_image_v1_ran(change: str, tmp_path: Path) -> None:
    """v2 hangs; meanwhile v1's path is replaced by another working server (or deleted):
    the rollback still runs the very file v1 ran, with its state."""
    path = tmp_path / "kvd"
    install(fixture_binary("kvstore", "v1"), path)
    hanging = str(fixture_binary("faulty", "v2-hang"))
    with start_server(path) as server, KvClient(server.port) as client:
        client.set("a", "b")
        image, fds = exe_inode(server.pid), open_fds(server.pid)
        attach = ["attach", str(server.pid), "--new", hanging, "--timeout", "3", "--allow-drop"]
        tool = start_tool(*attach)
        deadline = time.monotonic() + 60
        while not os.path.samefile(f"/proc/{server.pid}/exe", hanging):  # v2 started
            assert tool.poll() is None and time.monotonic() < deadline, tool.communicate()
            time.sleep(0.002)
        if change == "replaced":
            install(fixture_binary("kvstore", "v2"), path)
        else:
            path.unlink()
        _, stderr = tool.communicate(timeout=120)
        assert tool.returncode == 11, stderr
        assert "Traceback" not in stderr and "rolled back" in stderr
        assert exe_inode(server.pid) == image
        assert client.stats()["version"] == 1 and client.get("a") == "b"
        assert open_fds(server.pid) == fds


def test_guardian_rolls_back_to_the_image_v1_ran(tmp_path: Path) -> None:
    """The tool dies after the exec, v1's path already holds another version: the guardian
    execs the very file v1 ran, through the fd the process holds on it."""
    path = tmp_path / "kvd"
    install(fixture_binary("kvstore", "v1"), path)
    with start_server(path) as server, KvClient(server.port) as client:
        client.set("a", "b")
        image, fds = exe_inode(server.pid), open_fds(server.pid)
        install(fixture_binary("kvstore", "v3"), path)
        result = run_tool(
            "attach",
            str(server.pid),
            "--new",
            str(fixture_binary("kvstore", "v2")),
            "--xform",
            str(REPO / "fixtures" / "kvstore" / "xform_v1_v2.py"),
            env={"EKIDEN_TRACE_KILL_AT": "restore"},
        )
        assert result.returncode == -9, result.stderr
        settled(server.pid)
        assert exe_inode(server.pid) == image
        assert client.stats()["version"] == 1 and client.get("a") == "b"
        assert open_fds(server.pid) == fds


def test_apt_upgrade_of_a_stripped_server_with_debuginfod(tmp_path: Path) -> None:
    """The whole package flow: stripped v1 installed, its debug info on a debuginfod
    server; apt renames stripped v2 over it; attach to the same path."""
    path = tmp_path / "root" / "usr" / "sbin" / "counterd"
    debug = {}
    for version in ("v1", "v2"):
        built = distro_build(fixture_binary("counter", version), tmp_path / version / "counterd")
        debug[build_id(tmp_path / version / "counterd")] = built
    install(tmp_path / "v1" / "counterd", path)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "EKIDEN_DEBUG_DIRS": str(tmp_path)}
    with debuginfod(debug) as (url, asked), start_server(path) as server:
        env["DEBUGINFOD_URLS"] = url
        with CounterClient(server.port) as client:
            assert client.send("one") == "v1 #1 echo: one"
            install(tmp_path / "v2" / "counterd", path)
            result = run_tool("attach", str(server.pid), "--new", str(path), "--json", env=env)
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["outcome"] == "updated"
            assert client.send("two") == "v2 #1 echo: two"
        assert sorted(asked) == sorted(f"/buildid/{ident}/debuginfo" for ident in debug)
