"""The tool SIGKILLed at each phase of an update: the service keeps serving, no client
connection is lost, and exactly one copy of the server runs, with its state."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from clients import KvClient, code_bytes, fixture_binary, start_server
from conftest import REPO, needs_ptrace, process_state, run_tool, tracer_of
from ftp_helpers import login, make_root, running_ftpd, wait_until

pytestmark = needs_ptrace

BEFORE_EXEC = ["attached", "waiting", "captured", "cloexec"]
AFTER_EXEC = ["exec", "restore", "detach"]
NKEYS = 300
LARGE = 2_000  # 6,000 heap objects: more than guard.INLINE_OBJECTS


def settled(pid: int, timeout: float = 30) -> str:
    """Wait until nobody traces the process (the guardian is done); its binary's name."""
    deadline = time.monotonic() + timeout
    while tracer_of(pid) != 0 or process_state(pid) not in "SR":
        assert time.monotonic() < deadline, f"process {pid} still traced or stopped"
        time.sleep(0.01)
    return os.path.basename(os.path.realpath(f"/proc/{pid}/exe"))


@pytest.mark.parametrize(
    ("phase", "nkeys"),
    [(phase, NKEYS) for phase in BEFORE_EXEC + AFTER_EXEC]
    # A state this large is handed to the guardian by a forked writer, not during the pause.
    + [(phase, LARGE) for phase in ("cloexec", "exec", "restore")],
)
def test_tool_killed_at(phase: str, nkeys: int) -> None:
    keys = {f"k{i}": f"v{i}" for i in range(nkeys)}
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.pipeline([f"SET {k} {v}" for k, v in keys.items()])
        before = code_bytes(server.pid)
        cpus = os.sched_getaffinity(server.pid)
        result = run_tool(
            "attach",
            str(server.pid),
            "--new",
            str(fixture_binary("kvstore", "v2")),
            "--xform",
            str(REPO / "fixtures" / "kvstore" / "xform_v1_v2.py"),
            env={"EKIDEN_TRACE_KILL_AT": phase},
        )
        assert result.returncode == -9, (phase, result.returncode, result.stderr)
        version = settled(server.pid)
        stats = client.stats()  # the same connection, still open
        if phase in BEFORE_EXEC:
            assert version == "v1" and stats["version"] == 1
            assert code_bytes(server.pid) == before
        elif phase == "detach":
            assert version == "v2" and stats["version"] == 2  # the update had completed
        else:
            assert version == "v1" and stats["version"] == 1  # rolled back by the guardian
        answers = client.pipeline([f"GET {k}" for k in keys])
        assert answers == [f"VALUE {v}" for v in keys.values()]
        assert client.count() == nkeys
        assert os.sched_getaffinity(server.pid) == cpus  # given back by the guardian
        assert stats["clients"] == 1
        assert server.alive()


@pytest.mark.parametrize("phase", ["captured", "restore", "detach"])
def test_tool_killed_during_a_tree_update(phase: str, tmp_path: Path) -> None:
    with running_ftpd("v1", make_root(tmp_path)) as server:
        ftp = login(server.port)
        ftp.cwd("/pub")
        wait_until(lambda: len(server.sessions()) == 1, "one session")
        session = server.sessions()[0]
        result = run_tool(
            "attach",
            str(server.pid),
            "--new",
            str(fixture_binary("ftpd", "v2")),
            "--tree",
            env={"EKIDEN_TRACE_KILL_AT": phase},
        )
        assert result.returncode == -9, result.stderr
        # The tool died while updating the session (the first of the tree): the session is
        # on v1 again (or on v2 if it had finished), the listener was never touched.
        expected = "v2" if phase == "detach" else "v1"
        assert settled(session) == expected
        assert settled(server.pid) == "v1"
        assert ftp.pwd() == "/pub"  # the same control connection, with its state
        assert len(server.sessions()) == 1
        fresh = login(server.port)
        assert fresh.pwd() == "/"
        fresh.quit()
        ftp.quit()
