"""The issue-12 cases a hostile tester found: each gets one sentence and its documented exit
code through the real command line, never a traceback, and the service keeps serving."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clients import CounterClient, KvClient, fixture_binary, start_server
from conftest import REPO, needs_ptrace, process_state, run_tool, start_tool, tracer_of, wait_traced

from ekiden_trace.binary.dwarf.cache import cache_dir

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
        else:  # a refused plan (it drops state, needs a transformer): nothing was touched
            result = run_tool(
                "attach", str(server.pid), "--new", str(fixture_binary("kvstore", "v3"))
            )
            assert result.returncode in (9, 10), result.stderr
        no_traceback(result)
        serving(server.pid, client)


def attach_command(pid: int, new: str = V2, xform: bool = True) -> list[str]:
    args = [sys.executable, "-m", "ekiden_trace", "attach", str(pid), "--new", new]
    return [*args, "--xform", str(REPO / "fixtures/kvstore/xform_v1_v2.py")] if xform else args


@pytest.mark.parametrize("round_", range(4))
def test_two_attach_commands_race_on_one_pid(round_: int) -> None:
    """Exactly one updates; the other says who holds the process, never blames the kernel."""
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.set("kept", "yes")
        both = [start_tool(*attach_command(server.pid)[3:]) for _ in range(2)]
        results = [(p.wait(timeout=60), *p.communicate()) for p in both]
        codes = sorted(code for code, _, _ in results)
        errors = "".join(err for _, _, err in results)
        assert codes == [0, 3], results
        assert "Traceback" not in errors and "Yama" not in errors and "refused" not in errors
        assert "another ekiden-trace command (pid" in errors or "already traced by" in errors
        serving(server.pid, client, version=2)


def test_a_process_updated_by_another_command_meanwhile_is_refused(tmp_path: Path) -> None:
    """Two users (two lock directories): the slow command planned v1 -> v2, the fast one
    updated the process meanwhile; the slow one finds another file running, and refuses."""
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.set("kept", "yes")
        slow = start_tool(
            *attach_command(server.pid)[3:],
            env={
                "XDG_CACHE_HOME": str(tmp_path),
                "EKIDEN_TRACE_SLOW_AT": "planned:3",
            },
        )
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("ekiden-trace/locks/*.lock")):  # planning now
            assert time.monotonic() < deadline and slow.poll() is None
            time.sleep(0.01)
        fast = run_tool(*attach_command(server.pid)[3:])
        assert fast.returncode == 0, fast.stderr
        _, err = slow.communicate(timeout=60)
        assert slow.returncode == 3, err
        # Found before or after seizing, depending on how far the slow one had come.
        assert "Traceback" not in err and (
            "no longer runs the program that was read" in err
            or f"runs {fixture_binary('kvstore', 'v2')}, not" in err
            or "changed its mappings while they were read" in err
        ), err
        serving(server.pid, client, version=2)


def test_a_second_command_names_the_one_that_holds_the_process() -> None:
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.set("kept", "yes")
        slow = subprocess.Popen(
            attach_command(server.pid),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "EKIDEN_TRACE_SLOW_AT": "planned:3"},
        )
        lock = cache_dir() / "locks" / f"{server.pid}.lock"
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().strip() == str(slow.pid)):
            assert time.monotonic() < deadline and slow.poll() is None
            time.sleep(0.01)
        for command in (["inspect", str(server.pid)], attach_command(server.pid)[3:]):
            second = run_tool(*command)
            assert second.returncode == 3, second.stderr
            assert f"another ekiden-trace command (pid {slow.pid}, " in second.stderr
            assert "Traceback" not in second.stderr
        _, err = slow.communicate(timeout=60)
        assert slow.returncode == 0, err
        serving(server.pid, client, version=2)


def signal_state(pid: int) -> dict[str, str]:
    """The signal masks of a process as /proc shows them."""
    fields = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {key: fields[key] for key in ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")}


def test_new_version_taking_every_stop_signal_fails_at_once() -> None:
    """v2 blocks SIGURG and SIGWINCH and catches SIGCHLD: its marks could never report.  The
    update fails at its first mark, and the rollback gives v1 back its own signal mask (the
    exec would keep v2's, and v1's marks would wait for ever)."""
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.set("kept", "yes")
        before = signal_state(server.pid)
        started = time.monotonic()
        result = run_tool(
            *attach_command(server.pid, str(fixture_binary("faulty", "v2-nosignal")))[3:],
            "--timeout",
            "30",
        )
        assert result.returncode == 11, result.stderr
        assert time.monotonic() - started < 25, "failed only at the timeout"
        assert "blocks or catches all of SIGURG, SIGWINCH, SIGCHLD" in result.stderr
        no_traceback(result)
        serving(server.pid, client)
        assert signal_state(server.pid) == before
        # Its marks report again: the next update goes through.
        again = run_tool(*attach_command(server.pid)[3:])
        assert again.returncode == 0, again.stderr
        serving(server.pid, client, version=2)


def test_new_version_blocking_the_stop_signal_gets_another_one() -> None:
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.set("kept", "yes")
        result = run_tool(
            *attach_command(server.pid, str(fixture_binary("faulty", "v2-blockurg")))[3:]
        )
        assert result.returncode == 0, result.stderr
        serving(server.pid, client, version=2)
        assert int(signal_state(server.pid)["SigBlk"], 16) & 1 << (signal.SIGURG - 1)


@pytest.mark.parametrize("signo", [signal.SIGSTOP, signal.SIGTSTP])
def test_a_stopped_target_is_told_stopped(signo: int) -> None:
    server = start_server(fixture_binary("kvstore", "v1"), own_group=True)
    with server, KvClient(server.port) as client:
        client.set("kept", "yes")
        os.kill(server.pid, signo)
        deadline = time.monotonic() + 10
        while process_state(server.pid) != "T":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for command in (["inspect", str(server.pid)], attach_command(server.pid)[3:]):
            result = run_tool(*command)
            assert result.returncode == 3, result.stderr
            assert "is stopped (SIGSTOP or job control)" in result.stderr
            assert f"kill -CONT {server.pid}" in result.stderr
            no_traceback(result)
        shown = run_tool("inspect", "--now", str(server.pid))  # reading it needs no point
        assert shown.returncode == 0, shown.stderr
        assert process_state(server.pid) == "T" and tracer_of(server.pid) == 0
        os.kill(server.pid, signal.SIGCONT)
        serving(server.pid, client)


def test_a_target_stopped_while_waiting_is_told_stopped() -> None:
    with start_server(fixture_binary("counter", "v1")) as server:
        client = CounterClient(server.port)
        assert client.send("one") == "v1 #1 echo: one"
        # con_loop is never reached while the client stays: the tool waits.
        tool = start_tool("inspect", "--point", "con_loop", "--timeout", "3", str(server.pid))
        wait_traced(server.pid, tool.pid)
        os.kill(server.pid, signal.SIGSTOP)
        _, err = tool.communicate(timeout=60)
        assert tool.returncode == 4, err
        assert "because it is stopped (SIGSTOP or job control)" in err and "Traceback" not in err
        os.kill(server.pid, signal.SIGCONT)
        assert client.send("two") == "v1 #1 echo: two"
        client.close()
