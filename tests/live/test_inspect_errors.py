"""Bad input to `inspect`: one clear sentence, a non-zero exit, and a target left as it was."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clients import CounterClient, KvClient, code_bytes, fixture_binary, start_server
from conftest import REPO, compile_marked, needs_ptrace, process_state, run_tool, tracer_of

pytestmark = needs_ptrace


def expect_refusal(args: list[str], code: int, words: str) -> str:
    result = run_tool(*args)
    message = result.stderr.strip()
    assert result.returncode == code, (result.returncode, message)
    assert message.startswith("ekiden-trace: ") and "\n" not in message, message
    assert words in message, message
    return message


def assert_unchanged(pid: int, before: bytes) -> None:
    assert process_state(pid) in "SR", process_state(pid)
    assert tracer_of(pid) == 0
    assert code_bytes(pid) == before


@pytest.fixture
def kvstore() -> Iterator[Any]:
    with start_server(fixture_binary("kvstore", "v1")) as server:
        yield server


def test_nonexistent_pid() -> None:
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    expect_refusal(["inspect", str(pid_max + 1)], 3, "no process with pid")


def test_process_already_traced(kvstore: Any) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from ptrace.binding.func import ptrace
            ptrace(0x4206, {kvstore.pid}, 0, 0)  # PTRACE_SEIZE: the process keeps running
            print("held", flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with KvClient(kvstore.port) as client:
            before = code_bytes(kvstore.pid)
            expect_refusal(["inspect", str(kvstore.pid)], 3, f"traced by pid {holder.pid}")
            assert client.command("COUNT") == "COUNT 0"
            assert code_bytes(kvstore.pid) == before
    finally:
        holder.kill()
        holder.wait()


def test_pid_of_another_user_is_refused(kvstore: Any, tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    probe = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            "import ekiden_trace",
        ],
        capture_output=True,
        cwd=REPO,
    )
    if probe.returncode != 0:
        pytest.skip("user nobody cannot run ekiden-trace from this checkout")
    before = code_bytes(kvstore.pid)
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "ekiden_trace",
            "inspect",
            str(kvstore.pid),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"XDG_CACHE_HOME": str(tmp_path / "c")},
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("ekiden-trace: ") and result.stderr.count("\n") == 1
    assert_unchanged(kvstore.pid, before)


def test_process_without_marks() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        time.sleep(0.05)
        expect_refusal(["inspect", str(sleeper.pid)], 2, "has no ekiden marks")
        assert process_state(sleeper.pid) == "S"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stripped_binary(tmp_path: Path) -> None:
    stripped = tmp_path / "kvstore"
    shutil.copy(fixture_binary("kvstore", "v1"), stripped)
    subprocess.run(["strip", str(stripped)], check=True)
    with start_server(stripped) as server, KvClient(server.port) as client:
        before = code_bytes(server.pid)
        expect_refusal(["inspect", str(server.pid)], 2, "is stripped")
        assert client.command("COUNT") == "COUNT 0"
        assert_unchanged(server.pid, before)


def test_unknown_point_name(kvstore: Any) -> None:
    before = code_bytes(kvstore.pid)
    expect_refusal(["inspect", "--point", "nowhere", str(kvstore.pid)], 2, "poll_loop")
    assert_unchanged(kvstore.pid, before)


def test_point_never_reached_times_out_and_leaves_it_running() -> None:
    with start_server(fixture_binary("counter", "v1")) as server:
        client = CounterClient(server.port)
        assert client.send("one") == "v1 #1 echo: one"
        before = code_bytes(server.pid)
        # The client stays in handle_client's loop, so main never returns to con_loop.
        expect_refusal(
            ["inspect", "--point", "con_loop", "--timeout", "1", str(server.pid)],
            4,
            "did not reach update point con_loop",
        )
        assert_unchanged(server.pid, before)
        assert client.send("two") == "v1 #1 echo: two"
        client.close()


def test_multi_threaded_target(tmp_path: Path) -> None:
    source = tmp_path / "threads.c"
    source.write_text(
        textwrap.dedent("""
        #include <pthread.h>
        #include <stdio.h>
        #include <unistd.h>
        #include "ekiden.h"
        static int state;
        static void *idle(void *arg) { (void)arg; for (;;) pause(); }
        int main(void) {
            pthread_t t;
            (void)EKIDEN_TAG(state);
            pthread_create(&t, NULL, idle, NULL);
            printf("listening on 0\\n");
            fflush(stdout);
            for (;;) { EKIDEN_UPDATE_POINT(loop); sleep(1); }
        }
    """)
    )
    binary = tmp_path / "threads"
    compile_marked(source, binary, "-g", "-O2", "-pthread")
    proc = subprocess.Popen([str(binary)], stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        before = code_bytes(proc.pid)
        expect_refusal(["inspect", str(proc.pid)], 3, "multi-threaded")
        assert_unchanged(proc.pid, before)
    finally:
        proc.kill()
        proc.wait()
