"""Shared helpers: run the real ekiden-trace command, and look at a process from outside."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_tool(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `ekiden-trace ARGS` as a user would (with extra environment), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "ekiden_trace", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def start_tool(
    *args: str, env: dict[str, str] | None = None, quiet: bool = False
) -> subprocess.Popen[str]:
    """Start `ekiden-trace ARGS` in the background (with extra environment); its output is
    piped as text, or thrown away when `quiet`."""
    output = subprocess.DEVNULL if quiet else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, "-m", "ekiden_trace", *args],
        cwd=REPO,
        stdout=output,
        stderr=output,
        text=True,
        env={**os.environ, **(env or {})},
    )


def compile_marked(source: Path, binary: Path, *flags: str) -> Path:
    """Compile a C program that includes ekiden.h (gcc -I probes FLAGS); the binary."""
    cmd = ["gcc", "-I", str(REPO / "probes"), *flags, str(source), "-o", str(binary)]
    subprocess.run(cmd, check=True)
    return binary


def tool_json(*args: str) -> Any:
    """Run `ekiden-trace ARGS --json`, require success, and parse its output."""
    result = run_tool(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def process_state(pid: int) -> str:
    """The one-letter state of a process from /proc/PID/stat (R, S, t, Z, ...)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def tracer_of(pid: int) -> int:
    """TracerPid of a process (0 when nobody traces it)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


def wait_traced(pid: int, tracer: int | None = None, timeout: float = 10) -> None:
    """Wait until a process is traced (by `tracer`, when given), e.g. by a tool just started."""
    deadline = time.monotonic() + timeout
    while tracer_of(pid) == 0 or (tracer is not None and tracer_of(pid) != tracer):
        assert time.monotonic() < deadline, f"process {pid} was never traced"
        time.sleep(0.002)


RUN_ENV = "EKIDEN_TEST_RUN"  # inherited by the tools a test starts, and by their guardians


@pytest.fixture(autouse=True)
def tagged_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tag each test's tools, so that its guardians can be told from other tests'."""
    monkeypatch.setenv(RUN_ENV, uuid.uuid4().hex)


def guardians_of_this_test() -> list[int]:
    """The guardians still running that a tool of this test started.  They do not hold the
    tool's output, so run_tool returns when the tool ends, maybe before they are done."""
    tag = f"{RUN_ENV}={os.environ[RUN_ENV]}".encode()
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if (
                argv[-3:-1] == [b"ekiden_trace", b"_guard"]
                and tag in Path(f"/proc/{entry}/environ").read_bytes()
            ):
                found.append(int(entry))
    return found


def wait_for_guardians(timeout: float = 30) -> None:
    """Wait until the guardians of this test are done."""
    deadline = time.monotonic() + timeout
    while guardians_of_this_test():
        assert time.monotonic() < deadline, "a guardian of this test still runs"
        time.sleep(0.01)


def ptrace_allowed() -> bool:
    """Whether this user may trace its own children here."""
    if os.geteuid() == 0:
        return True
    scope = Path("/proc/sys/kernel/yama/ptrace_scope")
    return not scope.exists() or scope.read_text().strip() in ("0", "1")


needs_ptrace = pytest.mark.skipif(
    not ptrace_allowed(), reason="ptrace is not permitted for this user (yama ptrace_scope)"
)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start children that are killed and reaped at the end of the test."""
    children: list[subprocess.Popen[str]] = []

    def start(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        children.append(proc)
        return proc

    yield start
    for proc in children:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
