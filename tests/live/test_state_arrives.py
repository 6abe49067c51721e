"""Every tagged value arrives, or the update is refused before the exec (issue 11)."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from clients import LineClient, fixture_binary, start_server
from conftest import compile_marked, needs_ptrace, run_tool, start_tool, tracer_of

pytestmark = needs_ptrace


def test_new_fields_of_a_tagged_local_keep_v2s_initial_values() -> None:
    """session v2's initialiser sets log_fd = -1 and max_line = 64 in a local struct; after
    an update from v1 they hold those values (as `diff` says), not zeros."""
    v1, v2 = fixture_binary("session", "v1"), fixture_binary("session", "v2")
    plan = run_tool("diff", str(v1), str(v2))
    assert plan.returncode == 0, plan.stderr
    assert "field log_fd added (keeps v2's initial value)" in plan.stdout
    assert "field max_line added (keeps v2's initial value)" in plan.stdout
    with start_server(v1) as server, LineClient(server.port) as client:
        assert client.command("USER alice") == "v1 hello alice"
        assert client.command("INFO") == "v1 requests=2 user=alice"
        result = run_tool("attach", str(server.pid), "--new", str(v2))
        assert result.returncode == 0, result.stderr
        assert client.command("INFO") == "v2 requests=3 user=alice log_fd=-1 max_line=64"
        assert client.command("x" * 65) == "v2 ERR request longer than 64"


def test_a_tagged_local_of_main_arrives_from_100000_frames_deep() -> None:
    """deep's update point is 100,000 frames above main, whose `total` must arrive."""
    v1, v2 = fixture_binary("deep", "v1"), fixture_binary("deep", "v2")
    with start_server(v1) as server, LineClient(server.port) as client:
        assert client.command("ADD 5") == "v1 total=5"
        result = run_tool("attach", str(server.pid), "--new", str(v2))
        assert result.returncode == 0, result.stderr
        assert "main:total" in result.stdout
        assert client.command("ADD 1") == "v2 total=6"
        assert client.command("DEPTH") == "v2 total=6 depth=100000"


# main's tagged `count` is below hop(), a function of hand-written assembly with no unwind
# information: the unwinder cannot walk past it, so main's frame is not found.
NO_CFI = textwrap.dedent(
    """\
    #include <errno.h>
    #include <stdio.h>
    #include <unistd.h>
    #include "ekiden.h"

    void hop(int *count, void (*fn)(int *));
    __asm__(".text\\n.globl hop\\nhop:\\n\\tpush %rbp\\n\\tcall *%rsi\\n\\tpop %rbp\\n\\tret\\n");

    static void serve(int *count)
    {
        char line[64];

        for (;;) {
            EKIDEN_UPDATE_POINT(serve_loop);
            ssize_t n = read(0, line, sizeof line);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                return;
            printf("v%d count=%d\\n", VERSION, ++*count);
            fflush(stdout);
        }
    }

    int main(void)
    {
        int count;

        if (EKIDEN_TAG(count))
            count = 0;
        hop(&count, serve);
        return 0;
    }
    """
)


def test_a_tagged_variable_that_cannot_be_found_refuses_the_update(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    source = tmp_path / "no_cfi.c"
    source.write_text(NO_CFI)
    v1, v2 = (
        compile_marked(source, tmp_path / f"v{n}", "-g", "-O2", f"-DVERSION={n}") for n in (1, 2)
    )
    proc = spawn(v1)
    assert proc.stdin is not None and proc.stdout is not None

    def ask() -> str:
        proc.stdin.write("next\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    assert ask() == "v1 count=1"
    result = run_tool("attach", str(proc.pid), "--new", str(v2))
    assert result.returncode == 10, result.stderr
    assert "Traceback" not in result.stderr
    assert "`main:count` cannot be read: main is not among the" in result.stderr
    assert "no unwind information" in result.stderr
    assert tracer_of(proc.pid) == 0
    assert ask() == "v1 count=2"


@pytest.mark.parametrize(
    ("slow_at", "fault", "runs"),
    [
        ("captured", None, "v2"),  # the child exits while the process is stopped, before the exec
        ("exec", None, "v2"),  # ... while v2's start-up still has default dispositions
        ("restore", None, "v2"),  # ... after the first of v2's tags was written
        ("exec", "restore-write", "v1"),  # ... and the update is rolled back
    ],
)
def test_a_child_exiting_during_the_update_is_reaped(
    slow_at: str, fault: str | None, runs: str
) -> None:
    """reaper counts its children in its SIGCHLD handler; a child that exits during a slowed
    update must be reaped by the version that runs afterwards, with the counts kept true."""
    env = {**os.environ, "EKIDEN_TRACE_SLOW_AT": f"{slow_at}:0.5"}
    if fault:
        env["EKIDEN_TRACE_FAULT"] = fault
    v1, v2 = fixture_binary("reaper", "v1"), fixture_binary("reaper", "v2")
    with start_server(v1) as server, LineClient(server.port) as client:
        child = int(client.command("SPAWN 60000").split()[-1])
        assert client.command("COUNT") == "v1 children=1 reaped=0"
        tool = start_tool("attach", str(server.pid), "--new", str(v2), env=env)
        assert tool.stderr is not None
        assert tool.stderr.readline().startswith(f"ekiden-trace: slowed at {slow_at}")
        os.kill(child, signal.SIGKILL)  # exits in the middle of the update
        _, err = tool.communicate(timeout=60)
        assert tool.returncode == (11 if fault else 0), err
        assert client.command("COUNT") == f"{runs} children=0 reaped=1"
        assert not Path(f"/proc/{child}").exists()  # reaped: no zombie left


@pytest.mark.parametrize(
    ("n", "last"),
    [(25, "20-30"), (5, "0-10")],
    ids=["inside the array", "at its start"],
)
def test_pointers_into_an_array_tagged_before_it(n: int, last: str) -> None:
    """interior's `last` and `last_hits` point to an element of `ranges` and to a field of
    it, and are captured before `ranges`; v2 inserts a field before `hits`.  After the update
    they point into v2's one array: a hit through the array shows through last_hits."""
    v1, v2 = fixture_binary("interior", "v1"), fixture_binary("interior", "v2")
    index = n // 10
    with start_server(v1) as server, LineClient(server.port) as client:
        assert client.command("HIT 35") == "v1 30-40 hits=1"
        assert client.command(f"HIT {n}") == f"v1 {last} hits=1"
        assert client.command(f"HIT {n + 1}") == f"v1 {last} hits=2"
        hits = ["0", "0", "0", "1"]
        hits[index] = "2"
        assert client.command("LAST") == f"v1 last={last} hits=2 all={','.join(hits)}"
        result = run_tool("attach", str(server.pid), "--new", str(v2))
        assert result.returncode == 0, result.stderr
        assert client.command("LAST") == f"v2 last={last} hits=2 sum=0 all={','.join(hits)}"
        assert client.command(f"HIT {n}") == f"v2 {last} hits=3 sum={n}"
        hits[index] = "3"
        assert client.command("LAST") == f"v2 last={last} hits=3 sum={n} all={','.join(hits)}"
