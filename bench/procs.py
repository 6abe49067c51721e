"""Child processes of the benchmarks: each in its own process group, every one killed at the end.

Servers, tool runs and helpers are all started through `spawn`, so that `kill_all`
(run on exit, on SIGTERM/SIGHUP and on Ctrl-C) can end them and anything they forked.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUSAGE = Path(__file__).resolve().with_name("rusage.py")
sys.path.insert(0, str(REPO / "tests"))

from clients import Server, free_port  # noqa: E402

_children: list[subprocess.Popen] = []
_lock = threading.Lock()


@contextlib.contextmanager
def sigchld_blocked() -> Iterator[None]:
    """Block SIGCHLD in this thread for the block's duration.

    Threads started inside inherit the mask.  Every helper thread must be started
    so: the tool's Tracee (used here for the floor) waits for its tracee with
    SIGCHLD blocked in sigtimedwait, and a thread with SIGCHLD unblocked would take
    the signal (and ignore it), leaving that wait to sleep out its time slice.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def start_thread(target: Callable[..., object], *args: object) -> threading.Thread:
    """A daemon thread that never takes SIGCHLD (see sigchld_blocked)."""
    thread = threading.Thread(target=target, args=args, daemon=True)
    with sigchld_blocked():
        thread.start()
    return thread


def spawn(argv: list[str], **kwargs: object) -> subprocess.Popen:
    """Start argv in a new process group and remember it for `kill_all`."""
    proc = subprocess.Popen(argv, start_new_session=True, **kwargs)  # type: ignore[call-overload]
    with _lock:
        _children.append(proc)
    return proc


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a child's whole process group (its forks too) and reap the child.

    Only while the child is unreaped: its pid, the group's id, cannot be reused then."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
            proc.wait(timeout=10)
    with _lock, contextlib.suppress(ValueError):
        _children.remove(proc)


def kill_all() -> None:
    """Kill every child still registered."""
    with _lock:
        left = list(_children)
    for proc in left:
        kill(proc)


def _on_signal(signo: int, _frame: object) -> None:
    raise SystemExit(128 + signo)


def install_cleanup() -> None:
    """Kill all children at exit; SIGINT raises KeyboardInterrupt (even when the shell
    started us with SIGINT ignored) and SIGTERM/SIGHUP exit cleanly."""
    atexit.register(kill_all)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signo in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, _on_signal)


class BenchServer(Server):
    """A fixture server (tests/clients.Server) that kills its process group when stopped."""

    def stop(self) -> None:
        kill(self.proc)
        super().stop()


def start_server(
    binary: Path,
    *args: str,
    port: int | None = None,
    prefix: tuple[str, ...] = (),
    timeout: float = 10,
) -> BenchServer:
    """Start a fixture with its port as argv[1] (under `prefix`, such as valgrind's command
    line); return once it says it listens."""
    port = free_port() if port is None else port
    proc = spawn(
        [*prefix, os.fspath(binary), str(port), *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if prefix else None,
        text=True,
    )
    with sigchld_blocked():  # its stdout reader thread
        server = BenchServer(proc, port)
    try:
        server.wait_for_line("listening on", timeout=timeout)
    except BaseException:
        server.stop()
        raise
    return server


@dataclass
class ToolRun:
    """One finished (or killed) run of a child command."""

    returncode: int | None
    stdout: str
    stderr: str
    wall: float
    maxrss_mb: float
    timed_out: bool


def run_measured(
    argv: list[str], timeout: float, env: dict[str, str] | None = None, rss: bool = True
) -> ToolRun:
    """Run argv to its end (killed after `timeout` s): wall time and, with `rss`, its own
    peak RSS (else NaN).

    For the RSS, argv runs under bench/rusage.py, a small fresh process, so its ru_maxrss is
    its own and not that of this (possibly large) bench process, which a direct child would
    inherit.  Without it, the wall time has no wrapper's start-up in it."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as peak,
    ):
        started = time.monotonic()
        wrapped = [sys.executable, "-I", "-S", str(RUSAGE), peak.name, *argv] if rss else argv
        proc = spawn(wrapped, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO, env=env)
        ended: list[float] = []

        def reap() -> None:  # blocks in waitpid: no polling delay in the wall time
            _pid, status = os.waitpid(proc.pid, 0)
            ended.append(time.monotonic())
            proc.returncode = os.waitstatus_to_exitcode(status)

        waiter = start_thread(reap)
        waiter.join(timeout)
        timed_out = waiter.is_alive()
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM if rss else signal.SIGKILL)
            waiter.join(10)  # rusage.py kills argv and writes its peak RSS
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # and whatever else the run started
            waiter.join()
        kill(proc)
        out.seek(0)
        err.seek(0)
        figure = peak.read().strip()
        return ToolRun(
            None if timed_out else proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            ended[0] - started,
            int(figure) / 1024 if figure else float("nan"),
            timed_out,
        )


def tool_argv(*args: str) -> list[str]:
    """The command line of `ekiden-trace ARGS`, with this venv's Python."""
    return [sys.executable, "-m", "ekiden_trace", *args]
