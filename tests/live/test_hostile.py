"""The issue-12 cases a hostile tester found: each gets one sentence and its documented exit
code through the real command line, never a traceback, and the service keeps serving."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clients import KvClient, fixture_binary, start_server
from conftest import REPO, needs_ptrace, process_state, run_tool, tracer_of

pytestmark = needs_ptrace

V2 = str(fixture_binary("kvstore", "v2"))


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def serving(pid: int, client: KvClient, version: int = 1) -> None:
    assert client.get("kept") == "yes" and client.stats()["version"] == version
    assert tracer_of(pid) == 0 and process_state(pid) in "SR"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
@pytest.mark.parametrize("command", ["inspect", "attach"])
def test_another_users_process(command: str, tmp_path: Path) -> None:
    """The tool without privileges (root without capabilities) on a process of nobody."""
    binary = tmp_path / "kv"
    shutil.copy(fixture_binary("kvstore", "v1"), binary)
    tmp_path.chmod(0o755)
    server = subprocess.Popen(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(binary), "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        assert server.stdout is not None and server.stdout.readline().startswith("listening")
        args = [command, str(server.pid)] + (["--new", V2] if command == "attach" else [])
        result = subprocess.run(
            [
                "setpriv",
                "--bounding-set=-all",
                "--inh-caps=-all",
                sys.executable,
                "-m",
                "ekiden_trace",
                *args,
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        no_traceback(result)
        assert result.returncode == 3 and "belongs to another user" in result.stderr
        assert server.poll() is None and tracer_of(server.pid) == 0
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("command", ["inspect", "attach"])
def test_binary_replaced_on_disk(command: str, tmp_path: Path) -> None:
    binary = tmp_path / "kv"
    shutil.copy(fixture_binary("kvstore", "v1"), binary)
    with start_server(binary) as server, KvClient(server.port) as client:
        client.set("kept", "yes")
        # As a package upgrade does: the new file is renamed over the old path.
        shutil.copy(fixture_binary("kvstore", "v2"), tmp_path / "kv.new")
        os.rename(tmp_path / "kv.new", binary)
        if command == "inspect":
            result = run_tool("inspect", str(server.pid))
            assert result.returncode == 0 and "table" in result.stdout, result.stderr
        else:  # a refused plan: nothing was touched
            result = run_tool(
                "attach", str(server.pid), "--new", str(fixture_binary("kvstore", "v3"))
            )
            assert result.returncode == 10, result.stderr
        no_traceback(result)
        serving(server.pid, client)
