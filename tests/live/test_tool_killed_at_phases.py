"""The tool SIGKILLed at each phase of an update: the service keeps serving, no client
connection is lost, and exactly one copy of the server runs, with its state."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from clients import KvClient, code_bytes, fixture_binary, start_server
from conftest import REPO, needs_ptrace, process_state, run_tool, tracer_of, wait_for_guardians
from ftp_helpers import login, make_root, running_ftpd, wait_until

from ekiden_trace.binary.dwarf.cache import cache_dir

pytestmark = needs_ptrace

BEFORE_EXEC = ["attached", "waiting", "captured", "cloexec"]
AFTER_EXEC = ["exec", "restore", "detach"]
NKEYS = 300
LARGE = 2_000  # 6,000 heap objects: more than guard.INLINE_OBJECTS


def settled(pid: int, timeout: float = 30) -> str:
    """Wait until the guardians of this test are done and nobody traces the process; its
    binary's name."""
    deadline = time.monotonic() + timeout
    wait_for_guardians(timeout)
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


def waiting_in_mark(pid: int) -> bool:
    """Whether the process sleeps in nanosleep (35), as a guarded mark waits."""
    return Path(f"/proc/{pid}/syscall").read_text().split()[0] == "35"


def kvstore_attach(pid: int, **env: str) -> subprocess.CompletedProcess[str]:
    """attach kvstore v1 -> v2, with the test hooks in `env`, its output captured."""
    return run_tool(
        "attach",
        str(pid),
        "--new",
        str(fixture_binary("kvstore", "v2")),
        "--xform",
        str(REPO / "fixtures" / "kvstore" / "xform_v1_v2.py"),
        env=env,
    )


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


@pytest.mark.parametrize("phase", BEFORE_EXEC + AFTER_EXEC)
def test_tool_and_guardian_killed_at(phase: str) -> None:
    """Both die (the OOM killer took them): every command recognises a process left in the
    middle of the update and changes nothing; `recover` rolls it back with its state."""
    keys = {f"k{i}": f"v{i}" for i in range(NKEYS)}
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.pipeline([f"SET {k} {v}" for k, v in keys.items()])
        result = kvstore_attach(
            server.pid, EKIDEN_TRACE_KILL_AT=phase, EKIDEN_TRACE_KILL_GUARDIAN_AT=phase
        )
        assert result.returncode == -9, (phase, result.returncode, result.stderr)
        version = settled(server.pid)
        if phase in ("exec", "restore"):  # v2 waits in a mark for a guardian that is dead
            assert version == "v2"
            wait_until(lambda: waiting_in_mark(server.pid), "v2 waiting in a mark")
            before = code_bytes(server.pid)
            for command in (["inspect", str(server.pid)], ["inspect", "--now", str(server.pid)]):
                refused = run_tool(*command)
                assert refused.returncode == 13, refused.stderr
                assert f"ekiden-trace recover {server.pid}" in refused.stderr
                no_traceback(refused)
            refused = kvstore_attach(server.pid)
            assert refused.returncode == 13 and "middle of an update" in refused.stderr
            assert code_bytes(server.pid) == before and settled(server.pid) == "v2"
            recovered = run_tool("recover", str(server.pid))
            assert recovered.returncode == 0 and "rolled back" in recovered.stdout, recovered
        else:
            recovered = run_tool("recover", str(server.pid))
            assert recovered.returncode == 0 and "nothing to recover" in recovered.stdout
        no_traceback(recovered)
        expected = "v2" if phase == "detach" else "v1"
        assert settled(server.pid) == expected
        stats = client.stats()  # the same connection, still open
        assert stats["version"] == int(expected[1]) and stats["clients"] == 1
        assert client.pipeline([f"GET {k}" for k in keys]) == [f"VALUE {v}" for v in keys.values()]
        assert run_tool("recover", str(server.pid)).returncode == 0  # nothing left to do


def test_state_file_gone_says_what_can_still_be_done() -> None:
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.set("kept", "yes")
        env = {"EKIDEN_TRACE_KILL_AT": "restore", "EKIDEN_TRACE_KILL_GUARDIAN_AT": "restore"}
        assert kvstore_attach(server.pid, **env).returncode == -9
        for state in (cache_dir() / "guard").glob(f"{server.pid}-*.pickle"):
            state.unlink()
        result = run_tool("recover", str(server.pid))
        assert result.returncode == 13, result.stderr
        assert "cannot be brought back" in result.stderr and "restart the service" in result.stderr
        no_traceback(result)
        assert settled(server.pid) == "v2"  # untouched: it still waits in its mark
        wait_until(lambda: waiting_in_mark(server.pid), "v2 waiting in a mark")


@pytest.mark.parametrize("phase", ["captured", "exec", "restore"])
def test_guardian_killed_the_tool_finishes(phase: str) -> None:
    """The tool notices its guardian died and finishes without it (no BrokenPipeError)."""
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.set("kept", "yes")
        result = kvstore_attach(server.pid, EKIDEN_TRACE_KILL_GUARDIAN_AT=phase)
        assert result.returncode == 0, result.stderr
        no_traceback(result)
        assert "the guardian died during the update" in result.stdout
        assert client.get("kept") == "yes" and client.stats()["version"] == 2


def test_guardian_does_not_hold_the_callers_pipes() -> None:
    """attach run with its output captured returns when the tool ends, while its guardian
    still works (slowed here); the guardian's log says what it did."""
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.set("kept", "yes")
        log = cache_dir() / "guard" / f"{server.pid}.log"
        result = kvstore_attach(
            server.pid, EKIDEN_TRACE_KILL_AT="restore", EKIDEN_TRACE_SLOW_AT="rescue:3"
        )
        assert result.returncode == -9
        # Returned before the guardian's rescue: the process still runs the new version.
        assert os.path.basename(os.path.realpath(f"/proc/{server.pid}/exe")) == "v2"
        wait_until(lambda: "rolled back to its old version" in log.read_text(), "the log")
        assert "taking over" in log.read_text()
        assert settled(server.pid) == "v1"
        assert client.get("kept") == "yes" and client.stats()["version"] == 1
