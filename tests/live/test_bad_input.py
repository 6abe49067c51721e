"""The bad-input matrix: each case gets one clear sentence, its documented exit code, and a
target that still serves with its code bytes unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clients import KvClient, code_bytes, fixture_binary, start_server
from conftest import REPO, compile_marked, needs_ptrace, process_state, run_tool

pytestmark = needs_ptrace

V2 = str(fixture_binary("kvstore", "v2"))


def zombie_pid() -> tuple[int, Callable[[], None]]:
    """A child that has exited and is not reaped yet."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    while process_state(proc.pid) != "Z":
        time.sleep(0.001)
    return proc.pid, proc.wait


def build(tmp: Path, name: str, source: str, *flags: str) -> str:
    path = tmp / f"{name}.c"
    path.write_text(textwrap.dedent(source))
    return str(compile_marked(path, tmp / name, "-O2", *flags))


MARKED = """
    #include <stdio.h>
    #include <unistd.h>
    #include "ekiden.h"
    {decls}
    int main(int argc, char **argv) {{
        {init}
        printf("listening on %s\\n", argc > 1 ? argv[1] : "0");
        fflush(stdout);
        for (;;) {{ EKIDEN_UPDATE_POINT(loop); pause(); }}
    }}
"""
WILD_POINTER = MARKED.format(
    decls="int *wild;", init="wild = (int *)0x1000; (void)EKIDEN_TAG(wild);"
)
LONG_CYCLE = MARKED.format(
    decls="#include <stdlib.h>\nstruct node { struct node *next; long n; }; struct node *ring;",
    init="""
        ring = malloc(sizeof *ring); ring->n = 0; ring->next = ring;
        for (long i = 1; i < 150000; i++) {
            struct node *n = malloc(sizeof *n); n->n = i; n->next = ring->next; ring->next = n;
        }
        (void)EKIDEN_TAG(ring);
    """,
)


def case_args(case: str, pid: int, tmp: Path) -> tuple[list[str], int, str]:
    """The command line of a case, its exit code, and words its sentence must contain."""
    new = ["attach", str(pid), "--new"]
    if case == "pid 0":
        return ["inspect", "0"], 3, "no process with pid 0"
    if case == "pid 1":
        return ["inspect", "1"], 3, "init process"
    if case == "kernel thread":
        return ["inspect", "2"], 3, "kernel thread"
    if case == "nonexistent pid":
        return (
            ["inspect", str(int(Path("/proc/sys/kernel/pid_max").read_text()) + 1)],
            3,
            "no process",
        )
    if case == "new binary is a directory":
        return [*new, str(tmp)], 2, "not a regular file"
    if case == "new binary is missing":
        return [*new, str(tmp / "missing")], 2, "does not exist"
    if case == "new binary is truncated":
        (tmp / "trunc").write_bytes(Path(V2).read_bytes()[:4096])
        return [*new, str(tmp / "trunc")], 2, "truncated"
    if case == "new binary is a script":
        (tmp / "script").write_text("#!/bin/sh\n")
        return [*new, str(tmp / "script")], 2, "not an ELF file"
    if case == "new binary of another architecture":
        data = bytearray(Path(V2).read_bytes())
        data[18:20] = (183).to_bytes(2, "little")
        (tmp / "arm").write_bytes(bytes(data))
        return [*new, str(tmp / "arm")], 2, "x86-64 programs only"
    if case == "new binary static without marks":
        static = build(tmp, "static", "int main(void) { return 0; }", "-static")
        return [*new, static], 2, "has no ekiden marks"
    if case == "new binary without DWARF":
        source = fixture_binary("kvstore", "v2").with_suffix(".c")
        out = compile_marked(source, tmp / "nodwarf", "-std=c99", "-D_GNU_SOURCE", "-O2")
        return [*new, str(out)], 2, "no DWARF debug info"
    if case == "new binary stripped":
        shutil.copy(V2, tmp / "stripped")
        subprocess.run(["strip", str(tmp / "stripped")], check=True)
        return [*new, str(tmp / "stripped")], 2, "is stripped"
    if case == "transformer with a syntax error":
        (tmp / "bad.py").write_text("def broken(:\n")
        return [*new, V2, "--xform", str(tmp / "bad.py")], 7, "does not import"
    if case == "transformer file missing":
        return [*new, V2, "--xform", str(tmp / "none.py")], 7, "does not exist"
    if case == "unknown point":
        return [*new, V2, "--point", "nowhere"], 2, "no update point named nowhere"
    if case == "unknown point for inspect":
        return ["inspect", "--point", "nowhere", str(pid)], 2, "no update point named nowhere"
    if case == "state needs a transformer":
        # --allow-drop: v1 -> v3 also drops state, refused (exit 9) before this check
        return [*new, str(fixture_binary("kvstore", "v3")), "--allow-drop"], 10, "djb2"
    if case == "--now with --point":
        return ["inspect", "--point", "poll_loop", "--timeout", "0.3", "--now", str(pid)], 64, ""
    if case == "negative timeout":
        return ["inspect", "--timeout", "-1", str(pid)], 4, "did not reach"
    if case == "usage error":
        return ["attach", str(pid)], 64, ""
    raise AssertionError(case)


CASES = [
    "pid 0",
    "pid 1",
    "kernel thread",
    "nonexistent pid",
    "new binary is a directory",
    "new binary is missing",
    "new binary is truncated",
    "new binary is a script",
    "new binary of another architecture",
    "new binary static without marks",
    "new binary without DWARF",
    "new binary stripped",
    "transformer with a syntax error",
    "transformer file missing",
    "unknown point",
    "unknown point for inspect",
    "state needs a transformer",
    "--now with --point",
    "negative timeout",
    "usage error",
]


@pytest.fixture(scope="module")
def kvstore() -> Iterator[Any]:
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.set("kept", "yes")
        yield server, client


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case: str, kvstore: Any, tmp_path: Path) -> None:
    server, client = kvstore
    args, code, words = case_args(case, server.pid, tmp_path)
    before = code_bytes(server.pid)
    result = run_tool(*args)
    assert result.returncode == code, (case, result.returncode, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert words in result.stderr, (case, result.stderr)
    assert "Traceback" not in result.stderr and last, case
    assert code_bytes(server.pid) == before
    assert client.get("kept") == "yes" and client.stats()["version"] == 1


def test_zombie_is_refused() -> None:
    pid, reap = zombie_pid()
    try:
        result = run_tool("inspect", str(pid))
        assert result.returncode == 3 and "zombie" in result.stderr, result.stderr
    finally:
        reap()


def test_target_traced_by_gdb_is_refused() -> None:
    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed (make setup installs it)")
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.set("kept", "yes")
        gdb = subprocess.Popen(
            ["gdb", "-nx", "-q", "-p", str(server.pid), "-batch", "-ex", "shell sleep 3"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while "TracerPid:\t0" in Path(f"/proc/{server.pid}/status").read_text():
                assert time.monotonic() < deadline
                time.sleep(0.01)
            result = run_tool("inspect", str(server.pid))
            assert result.returncode == 3 and "traced by pid" in result.stderr, result.stderr
        finally:
            gdb.wait(timeout=30)
        assert client.get("kept") == "yes"


@pytest.mark.parametrize(
    ("name", "source", "code", "words"),
    [
        ("wild", WILD_POINTER, 10, "(unmapped)"),
    ],
)
def test_state_with_a_wild_pointer_is_refused(
    name: str, source: str, code: int, words: str, tmp_path: Path
) -> None:
    binary = build(tmp_path, name, source, "-g")
    with start_server(Path(binary)) as server:
        before = code_bytes(server.pid)
        shown = run_tool("inspect", str(server.pid))
        assert shown.returncode == 0 and "unmapped" in shown.stdout, shown.stderr
        result = run_tool("attach", str(server.pid), "--new", binary)
        assert result.returncode == code and words in result.stderr, result.stderr
        assert code_bytes(server.pid) == before and server.alive()


def test_cycle_longer_than_100000_is_captured_once(tmp_path: Path) -> None:
    binary = build(tmp_path, "ring", LONG_CYCLE, "-g")
    with start_server(Path(binary)) as server:
        result = run_tool("inspect", "--json", str(server.pid), timeout=300)
        assert result.returncode == 0, result.stderr
        snapshot = json.loads(result.stdout)
        assert len(snapshot["objects"]) == 150_000
        assert server.alive()


def test_own_pid_is_refused() -> None:
    # exec keeps the shell's pid, so $$ is the tool's own pid.
    command = f"exec {sys.executable} -m ekiden_trace inspect $$"
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 3 and "is ekiden-trace itself" in result.stderr, result.stderr
