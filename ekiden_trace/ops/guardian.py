"""The guardian: a second process that finishes an update when the tool dies during it.

The tool starts it before the pause and hands it the captured state once it
has it: a small state is written at once; a large one is written by a forked
copy of the tool, so that the pause does not wait for it (a fork costs a few
milliseconds, pickling costs microseconds per heap object), and the guardian
waits for the file if it ever needs it.  If the tool then ends without
saying "done" (it was killed), the
guardian seizes the target: a new version still marked as being updated
(`guarded` in its control block) is waiting in a mark, half-restored, so the
guardian execs the old version again and restores the old state into it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ekiden_trace.binary.dwarf.cache import cache_dir
from ekiden_trace.errors import TargetError, describe_failure
from ekiden_trace.faults import GUARDIAN_KILL_ENV, KILL_ENV, guardian_started, kill_point
from ekiden_trace.ops.rollback import GuardState, own_fds, roll_back_to
from ekiden_trace.target.staging import unstage
from ekiden_trace.target.tracee import give_cpus

SEIZE_PATIENCE = 10.0
STATE_PATIENCE = 300.0  # how long the guardian waits for a state still being written
INLINE_OBJECTS = 2_000  # up to this many heap objects, the state is written during the pause


def log_path(pid: int) -> Path:
    """The guardian's log for target `pid`: what it did when a tool died updating it."""
    return guard_dir() / f"{pid}.log"


def guard_dir() -> Path:
    """Where guardians keep their state files and logs (0700)."""
    directory = cache_dir() / "guard"
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory


class Guardian:
    """The tool's side: start the guardian, hand it the state, tell it when all is done."""

    def __init__(self, pid: int, keep: Sequence[int | None] = ()) -> None:
        """Start the guardian of an update of process `pid`; it inherits the tool's fds
        `keep` under the same numbers (the old version's image, held open, so a rollback
        finds it whatever its path holds)."""
        env = {k: v for k, v in os.environ.items() if k not in (KILL_ENV, GUARDIAN_KILL_ENV)}
        self.log = log_path(pid)
        # Its own log, not the tool's stderr: a caller reading the tool's output through a
        # pipe must not wait for the guardian, which may outlive the tool by seconds.
        with open(self.log, "ab") as log:
            os.fchmod(log.fileno(), 0o600)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ekiden_trace", "_guard"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                bufsize=0,  # unbuffered: a dead guardian fails a write, never a later close
                pass_fds=[fd for fd in keep if fd is not None],
                start_new_session=True,  # a Ctrl-C meant for the tool does not reach it
                env=env,
            )
        # Its start-up (an interpreter and imports, ~0.1 s of CPU) must not overlap the
        # pause, where it would take turns on the CPU with the tool and the target.
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # "ready", or nothing if it failed to start
        guardian_started(self.proc.pid)
        self._state: Path | None = None
        self._writer: int | None = None  # the forked copy writing a large state

    def watch_cpus(self, pid: int) -> None:
        """Tell the guardian the target's CPU set, which the update may narrow for a while:
        if the tool dies meanwhile, the guardian gives it back."""
        with contextlib.suppress(OSError):
            cpus = os.sched_getaffinity(pid)
            self._send(f"cpus {pid} {','.join(map(str, sorted(cpus)))}\n")

    def watch_staging(self, root_fd: int, name: str) -> None:
        """Tell the guardian the staging directory `name` made in the root open at
        root_fd (an fd it inherited): if the tool dies, the guardian removes it."""
        self._send(f"staged {root_fd} {name}\n")

    def hand_over(self, state: GuardState) -> None:
        """Give the guardian what it needs to roll the target back."""
        self._state = guard_dir() / f"{state.pid}-{os.getpid()}.pickle"
        # The partial file exists from here on, so the guardian knows the state is coming.
        fd = os.open(_partial(self._state), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        if len(state.snapshot.objects) <= INLINE_OBJECTS:
            _write_state(fd, self._state, state)
        else:
            self._writer = _fork_writer(fd, self._state, state)
            os.close(fd)
        self._send(f"state {self._state}\n")

    def alive(self) -> bool:
        """Whether the guardian still runs (the tool's safety net, if it dies)."""
        return self.proc.poll() is None

    def done(self) -> None:
        """The update is over (done or rolled back by the tool itself): let the guardian go."""
        self._send("done\n")
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self._writer is not None:
            os.kill(self._writer, signal.SIGKILL)  # the state is no longer needed
            os.waitpid(self._writer, 0)
        if self._state is not None:
            self._state.unlink(missing_ok=True)
            _partial(self._state).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            if not self.log.stat().st_size:
                self.log.unlink()  # nothing happened worth keeping

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):  # a dead guardian: the update goes on without it
            self.proc.stdin.write(line.encode())


def _partial(path: Path) -> Path:
    return path.with_suffix(".part")


def _write_state(fd: int, path: Path, state: GuardState) -> None:
    """Write the state into `fd`, open on path's partial file; rename it to `path` when
    complete, so that `path` never exists half-written."""
    with os.fdopen(fd, "wb") as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.rename(_partial(path), path)


def _fork_writer(fd: int, path: Path, state: GuardState) -> int:
    """Fork a copy of the tool that writes the state and exits; its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setsid()  # a Ctrl-C or a kill of the tool's group does not stop it
            # Nor does it hold the caller's pipes (the tool's stdout and stderr).
            devnull = os.open(os.devnull, os.O_RDWR)
            for stdio in (0, 1, 2):
                os.dup2(devnull, stdio)
            # Off the CPU the tool may share with the target for the update.
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
            _write_state(fd, path, state)
            code = 0
        finally:
            os._exit(code)
    return pid


def _wait_for_state(path: Path) -> GuardState | None:
    """The state at `path`, waiting while a forked writer may still be writing it."""
    deadline = time.monotonic() + STATE_PATIENCE
    while not path.exists():
        if not _partial(path).exists() or time.monotonic() > deadline:
            return None
        time.sleep(0.01)
    return read_state(path)


def read_state(path: Path) -> GuardState:
    """The state a tool handed over, from its file (kept until the update is settled, so
    that `recover` finds it if the guardian dies too)."""
    with path.open("rb") as f:
        state: GuardState = pickle.load(f)
    return state


def log(message: str) -> None:
    """One line of the guardian's log (its stderr), with the time."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} ekiden-trace guardian {os.getpid()}: {message}", file=sys.stderr, flush=True)


def run_guardian() -> int:
    """The `_guard` entry point: wait for the tool's word, and act if it dies instead."""
    print("ready", flush=True)
    state_file: Path | None = None
    cpus: tuple[int, set[int]] | None = None
    staging: tuple[int, str] | None = None
    for line in sys.stdin:
        if line.startswith("state "):
            state_file = Path(line[6:].strip())
        elif line.startswith("cpus "):
            pid, listed = line.split()[1:]
            cpus = int(pid), {int(cpu) for cpu in listed.split(",")}
        elif line.startswith("staged "):
            fd, name = line.split()[1:]
            staging = int(fd), name
        elif line.strip() == "done":
            return 0
    if cpus is not None:
        give_cpus(*cpus)
    try:
        return _take_over(state_file)
    finally:
        if staging is not None:  # after the rollback, which may exec v1's staged copy
            unstage(*staging)


def _take_over(state_file: Path | None) -> int:
    """Roll the target back from the state in state_file, if the tool handed one over."""
    if state_file is None:
        return 0  # the tool died before the capture: the old version was never touched
    state = _wait_for_state(state_file)
    if state is None:
        log(
            f"the state of the update was never written ({state_file}); if the process is "
            "stuck in its new version, restart the service."
        )
        return 1
    log(f"the tool died during the update of process {state.pid}; taking over.")
    kill_point("rescue")
    try:
        rescued = rescue(state)
    except Exception as exc:
        log(f"{describe_failure(exc)}; its state stays in {state_file} for `recover`.")
        return 1
    state_file.unlink(missing_ok=True)
    if rescued:
        log(f"process {state.pid} was rolled back to its old version with its state.")
    else:
        log(f"process {state.pid} needed nothing: it was not left in the middle of the update.")
    return 0


def _seize_when_free(pid: int):
    """Seize the target once the dead tool's tracing has gone (the kernel detaches it)."""
    from ekiden_trace.target.tracee import Tracee

    deadline = time.monotonic() + SEIZE_PATIENCE
    while True:
        try:
            return Tracee.seize(pid)
        except TargetError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def rescue(state: GuardState) -> bool:
    """Roll the target back if the dead tool left it mid-update; True if it did."""
    from ekiden_trace.binary.files import hold, same_file
    from ekiden_trace.binary.program import Program
    from ekiden_trace.state.backend import program_bias
    from ekiden_trace.state.control import ControlBlock, mark_injector
    from ekiden_trace.state.rendezvous import leave
    from ekiden_trace.target import procfs

    tracee = _seize_when_free(state.pid)
    try:
        running = Program(hold(procfs.exe_path(state.pid)), procfs.exe_link(state.pid))
        bias = program_bias(state.pid, running)
        control = ControlBlock(tracee, running.marks.control + bias)
        injector = mark_injector(tracee, running, bias)
        if not control.is_guarded():
            if same_file(running.path, state.old_path):
                injector.restore_cloexec(state.cleared, own_fds(state))  # died before the exec
            return False  # or the new version already has all its state
        roll_back_to(injector, Program(state.old_path), state)
        return True
    finally:
        leave(tracee, None)
