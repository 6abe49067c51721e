"""Tracee against real processes: seize, stops, registers, memory, release."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import needs_ptrace
from ptrace.binding.func import ptrace

from ekiden_trace.errors import TargetError, WaitTimeout
from ekiden_trace.target import ptrace as pt
from ekiden_trace.target.images import load_image
from ekiden_trace.target.procfs import auxv
from ekiden_trace.target.tracee import (
    MemoryAccessError,
    Tracee,
    decode_status,
    sharing_cpu,
)

pytestmark = needs_ptrace

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 5.0
PTRACE_POKEUSER = 6
PTRACE_GETEVENTMSG = 0x4201


def pokeuser(pid: int, offset: int, word: int) -> None:
    """Write one word at `offset` in the tracee's `struct user`."""
    ptrace(PTRACE_POKEUSER, pid, offset, word & 0xFFFF_FFFF_FFFF_FFFF)


def geteventmsg(pid: int) -> int:
    """The message of the last PTRACE_EVENT stop (e.g. the former tid after an exec)."""
    msg = ctypes.c_ulong()
    ptrace(PTRACE_GETEVENTMSG, pid, 0, ctypes.addressof(msg))
    return msg.value


TARGET_C = r"""
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

long counter = 0x1122334455667788;
char text[] = "hello ekiden";

static void on_usr1(int sig) { (void)sig; write(1, "USR1\n", 5); }

static void *idle(void *arg) { (void)arg; for (;;) pause(); }

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "threads") == 0) {
        pthread_t t;
        pthread_create(&t, NULL, idle, NULL);
        puts("ready");
        for (;;) pause();
    }
    /* Page 1: 'x' with "edge" and its NUL in the last five bytes; page 2: 'y'
       and no NUL; page 3: no access. */
    char *edge = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(edge, 'x', 4096);
    memcpy(edge + 4091, "edge", 5);
    memset(edge + 4096, 'y', 4096);
    mprotect(edge + 8192, 4096, PROT_NONE);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;  /* no SA_RESTART: read() returns EINTR after it */
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);

    printf("%p %p %p %p\n", (void *)&counter, (void *)text, (void *)main, (void *)edge);
    char buf[256];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n < 0 && errno == EINTR) {
            puts("EINTR");
            continue;
        }
        if (n <= 0)
            return 0;
        printf("%ld %.*s", counter, (int)n, buf);
    }
}
"""


class Target:
    """A running test program with a pipe on stdin and stdout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.pid = proc.pid
        assert proc.stdout is not None
        fields = proc.stdout.readline().split()
        self.counter, self.text, self.main, self.edge = (int(f, 16) for f in fields)

    def line(self) -> str:
        """The next line the program prints."""
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def ask(self, message: str) -> str:
        """Send one line; the program answers with its counter and the line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(message + "\n")
        self.proc.stdin.flush()
        return self.line()


@pytest.fixture(scope="module")
def target_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the test program")
    build = tmp_path_factory.mktemp("target")
    source = build / "target.c"
    source.write_text(TARGET_C)
    binary = build / "target"
    subprocess.run(["gcc", "-g", "-O0", "-pthread", "-o", binary, source], check=True)
    return binary


@pytest.fixture
def target(spawn: Callable[..., subprocess.Popen[str]], target_binary: Path) -> Target:
    return Target(spawn(target_binary))


def state(pid: int) -> str:
    """The one-letter state from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def tracer_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    raise AssertionError("no TracerPid line")


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def wait_blocked(pid: int) -> None:
    """Wait until the program sleeps (blocked in read on its stdin)."""
    wait_until(lambda: state(pid) == "S", f"process {pid} to block")


# -- seize, stops, release -----------------------------------------------------


def test_seize_and_release_leave_the_target_running(target: Target) -> None:
    assert target.ask("one") == f"{0x1122334455667788} one"
    with Tracee.seize(target.pid) as tracee:
        assert tracee.stopped
        assert state(target.pid) == "t"
        assert tracer_pid(target.pid) == os.getpid()
        assert tracee.exe_path().endswith("/target")
    assert state(target.pid) in "SR"
    assert tracer_pid(target.pid) == 0
    assert target.ask("two") == f"{0x1122334455667788} two"


def test_release_is_idempotent_and_interrupts_a_running_tracee(target: Target) -> None:
    tracee = Tracee.seize(target.pid)
    tracee.cont()
    assert not tracee.stopped
    tracee.release()
    tracee.release()
    assert tracer_pid(target.pid) == 0
    assert target.ask("after").endswith(" after")


def test_wait_stop_kinds_and_latency(target: Target) -> None:
    with Tracee.seize(target.pid) as tracee:
        tracee.cont()
        with pytest.raises(WaitTimeout):
            tracee.wait_stop(timeout=0.05)
        durations = []
        for _ in range(50):
            start = time.perf_counter()
            tracee.interrupt()
            stop = tracee.wait_stop(TIMEOUT)
            durations.append(time.perf_counter() - start)
            assert (stop.kind, stop.signo, stop.event) == ("interrupt", signal.SIGTRAP, 128)
            assert tracee.stopped
            tracee.cont()
        print(f"interrupt to stop: median {statistics.median(durations) * 1e3:.3f} ms")
        tracee.interrupt()
        tracee.wait_stop(TIMEOUT)
        tracee.syscall()
        assert target.proc.stdin is not None
        target.proc.stdin.write("sys\n")
        target.proc.stdin.flush()
        stop = tracee.wait_stop(TIMEOUT)
        assert (stop.kind, stop.signo) == ("syscall", signal.SIGTRAP | 0x80)
    assert target.line().endswith(" sys")


def test_intercepted_signal_is_delivered_on_release(target: Target) -> None:
    wait_blocked(target.pid)
    with Tracee.seize(target.pid) as tracee:
        tracee.cont()
        os.kill(target.pid, signal.SIGUSR1)
        stop = tracee.wait_stop(TIMEOUT)
        assert stop.kind == "signal"
        assert stop.signo == signal.SIGUSR1
        assert stop.siginfo is not None
        assert stop.siginfo.si_signo == signal.SIGUSR1
        assert tracee.pending_signal == signal.SIGUSR1
    assert target.line() == "USR1"
    assert target.line() == "EINTR"


def test_group_stop_survives_release(target: Target) -> None:
    with Tracee.seize(target.pid) as tracee:
        tracee.cont()
        os.kill(target.pid, signal.SIGSTOP)
        stop = tracee.wait_stop(TIMEOUT)
        assert (stop.kind, stop.signo) == ("signal", signal.SIGSTOP)
        tracee.cont(stop.signo)
        stop = tracee.wait_stop(TIMEOUT)
        assert (stop.kind, stop.signo) == ("group", signal.SIGSTOP)
        tracee.listen()
    wait_until(lambda: state(target.pid) == "T", "the target to stay stopped")
    os.kill(target.pid, signal.SIGCONT)
    assert target.ask("cont").endswith(" cont")


def test_seize_a_stopped_process(target: Target) -> None:
    os.kill(target.pid, signal.SIGSTOP)
    wait_until(lambda: state(target.pid) == "T", "the target to stop")
    with Tracee.seize(target.pid) as tracee:
        assert tracee.stopped
    # Detaching wakes it briefly, to re-enter its group-stop.
    wait_until(lambda: state(target.pid) == "T", "the target to stay stopped")
    os.kill(target.pid, signal.SIGCONT)
    assert target.ask("woke").endswith(" woke")


def test_exec_stop_and_memory_after_exec(spawn: Callable[..., subprocess.Popen[str]]) -> None:
    proc = spawn("/bin/sh", "-c", "read line; exec /bin/sleep 30")
    wait_blocked(proc.pid)
    with Tracee.seize(proc.pid) as tracee:
        sp = tracee.regs().rsp
        tracee.write(sp, tracee.read(sp, 8))  # opens the /proc/PID/mem handle
        tracee.cont()
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        stop = tracee.wait_stop(TIMEOUT)
        while stop.kind != "exec":
            tracee.cont(tracee.pending_signal)
            stop = tracee.wait_stop(TIMEOUT)
        assert tracee.exe_path() == os.path.realpath("/bin/sleep")
        assert geteventmsg(proc.pid) == proc.pid  # the former thread id
        sp = tracee.regs().rsp
        word = tracee.read_word(sp)
        tracee.write_word(sp, word)  # a stale handle would write into nothing
        assert tracee.read_word(sp) == word
    wait_until(lambda: state(proc.pid) == "S", "sleep to run on")


def test_exit_while_traced(target: Target) -> None:
    with Tracee.seize(target.pid) as tracee:
        tracee.cont()
        assert target.proc.stdin is not None
        target.proc.stdin.close()
        stop = tracee.wait_stop(TIMEOUT)
        assert (stop.kind, stop.exit_code) == ("exited", 0)
        assert not tracee.alive
        tracee.release()


def test_decode_status() -> None:
    assert decode_status(0x0500).kind == "exited"
    assert decode_status(0x0009).kind == "killed"
    assert decode_status((128 << 16) | 0x137F).kind == "group"  # SIGSTOP
    assert decode_status((128 << 16) | 0x057F).kind == "interrupt"  # SIGTRAP
    assert decode_status((4 << 16) | 0x057F).kind == "exec"
    assert decode_status(0x857F).kind == "syscall"
    assert decode_status(0x0A7F).kind == "signal"  # SIGUSR1


def test_run_syscalls_stops_only_at_the_entry_of_a_watched_call(target: Target) -> None:
    wait_blocked(target.pid)
    with Tracee.seize(target.pid) as tracee:
        with pytest.raises(WaitTimeout):  # blocked in read: no stop at all
            tracee.run_syscalls({1}, time.monotonic() + 0.05)
        tracee.interrupt()
        tracee.wait_stop(TIMEOUT)
        assert target.proc.stdin is not None
        target.proc.stdin.write("sys\n")
        target.proc.stdin.flush()
        # The read returns (its exit stop is stepped over), then printf writes.
        stop = tracee.run_syscalls({1}, time.monotonic() + TIMEOUT)
        assert (stop.kind, tracee.stopped) == ("syscall", True)
        regs = tracee.regs()
        assert regs.orig_rax == 1 and regs.rax == -38 & (1 << 64) - 1  # entry: -ENOSYS
        # With cont, nothing stops at system calls: next is the signal sent meanwhile.
        os.kill(target.pid, signal.SIGUSR1)
        stop = tracee.run_syscalls({0, 1}, time.monotonic() + TIMEOUT, cont=True)
        assert (stop.kind, stop.signo) == ("signal", signal.SIGUSR1)
        target.proc.stdin.close()
        stop = tracee.run_syscalls({231}, time.monotonic() + TIMEOUT, stop.signo)
        assert stop.kind == "syscall" and tracee.regs().orig_rax == 231  # exit_group, not run
    assert target.line().endswith(" sys")
    assert target.line() == "USR1"


def test_auxv_gives_the_load_bias(target: Target, target_binary: Path) -> None:
    image = load_image(str(target_binary))
    assert image is not None
    bias = auxv(target.pid)[9] - image.entry  # AT_ENTRY
    assert image.functions["main"].addr + bias == target.main


def test_sharing_cpu_pins_both_and_gives_their_cpus_back(
    spawn: Callable[..., subprocess.Popen[str]], target_binary: Path
) -> None:
    proc = spawn(target_binary, "threads")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    tasks = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
    theirs, ours = os.sched_getaffinity(proc.pid), os.sched_getaffinity(0)
    with sharing_cpu(proc.pid):
        (cpu,) = os.sched_getaffinity(0)
        assert os.sched_getaffinity(proc.pid) == {cpu}
    assert os.sched_getaffinity(0) == ours
    assert all(os.sched_getaffinity(task) == theirs for task in tasks)


# -- registers and syscalls ------------------------------------------------------


def test_nudge_makes_a_blocking_read_return_eintr(target: Target) -> None:
    wait_blocked(target.pid)
    with Tracee.seize(target.pid) as tracee:
        assert tracee.in_restartable_syscall()
        assert tracee.regs().orig_rax == 0  # read
        assert tracee.nudge_syscall()
        assert not tracee.in_restartable_syscall()
        assert not tracee.nudge_syscall()
    assert target.line() == "EINTR"
    assert target.ask("back").endswith(" back")


def test_registers_round_trip(target: Target) -> None:
    with Tracee.seize(target.pid) as tracee:
        regs = tracee.regs()
        saved = regs.r12
        regs.r12 = 0x1234
        tracee.set_regs(regs)
        assert tracee.regs().r12 == 0x1234
        assert pt.peekuser(target.pid, 3 * 8) == 0x1234  # r12 is the 4th word of user_regs
        pokeuser(target.pid, 3 * 8, -1)
        assert tracee.regs().r12 == 0xFFFF_FFFF_FFFF_FFFF
        assert pt.peekuser(target.pid, 3 * 8) == 0xFFFF_FFFF_FFFF_FFFF
        regs.r12 = saved
        tracee.set_regs(regs)
    assert target.ask("regs").endswith(" regs")


# -- memory ---------------------------------------------------------------------


def test_read_write_round_trip(target: Target) -> None:
    with Tracee.seize(target.pid) as tracee:
        assert tracee.read_word(target.counter) == 0x1122334455667788
        assert tracee.read(target.text, 13) == b"hello ekiden\0"
        assert tracee.read_cstring(target.text) == b"hello ekiden"
        assert tracee.read_many([(target.counter, 8), (target.text, 5), (target.text, 0)]) == [
            (0x1122334455667788).to_bytes(8, "little"),
            b"hello",
            b"",
        ]
        spans = [(target.text + i % 12, 1) for i in range(3000)]
        assert b"".join(tracee.read_many(spans)) == b"hello ekiden" * 250
        tracee.write_word(target.counter, 42)
        tracee.write(target.text, b"HELLO")
        assert tracee.read_cstring(target.text) == b"HELLO ekiden"
        code = tracee.read(target.main, 32)
        tracee.write(target.main, code)  # read-only text is writable through /proc/PID/mem
        assert tracee.read(target.main, 32) == code
    assert target.ask("x") == "42 x"


def test_write_many_batches_and_falls_back_where_process_vm_writev_cannot(
    target: Target,
) -> None:
    with Tracee.seize(target.pid) as tracee:
        code = tracee.read(target.main, 32)
        spans = [(target.text + i % 12, b"HELLO EKIDEN"[i % 12 : i % 12 + 1]) for i in range(3000)]
        tracee.write_many(spans)  # three system calls of at most 1024 spans
        assert tracee.read_cstring(target.text) == b"HELLO EKIDEN"
        # Read-only code makes the batch fail; it is written span by span instead.
        tracee.write_many([(target.counter, (7).to_bytes(8, "little")), (target.main, code)])
        assert tracee.read_word(target.counter) == 7
        assert tracee.read(target.main, 32) == code
        with pytest.raises(MemoryAccessError, match="0x8 is not mapped"):
            tracee.write_many([(target.counter, bytes(8)), (8, b"z")])
    assert target.ask("x") == "0 x"


def test_reads_stop_at_unmapped_memory(target: Target) -> None:
    page = target.edge
    with Tracee.seize(target.pid) as tracee:
        with pytest.raises(MemoryAccessError, match="0x8 is not mapped") as info:
            tracee.read(8, 16)
        assert info.value.address == 8
        with pytest.raises(MemoryAccessError) as info:
            tracee.read(page + 8192 - 4, 8)
        assert info.value.address == page + 8192
        assert f"{page + 8192:#x}" in str(info.value)
        with pytest.raises(MemoryAccessError, match="span 2 of the batch") as info:
            tracee.read_many([(page, 8), (target.text, 4), (page + 8190, 4)])
        assert info.value.address == page + 8192
        assert tracee.read_cstring(page + 4091) == b"edge"
        assert tracee.read_cstring(page + 4000) == b"x" * 91 + b"edge"
        assert tracee.read_cstring(page + 4096, limit=10) == b"y" * 10
        with pytest.raises(MemoryAccessError, match="runs into unreadable memory") as info:
            tracee.read_cstring(page + 4096)
        assert info.value.address == page + 8192
        with pytest.raises(MemoryAccessError, match="0x8 is not mapped") as info:
            tracee.write(8, b"z")
        assert info.value.address == 8
    assert target.ask("fine").endswith(" fine")


def test_maps_and_signal_masks(target: Target, target_binary: Path) -> None:
    with Tracee.seize(target.pid) as tracee:
        maps = tracee.maps()
        assert any(m.path == str(target_binary) and "x" in m.perms for m in maps)
        assert any(m.start <= target.counter < m.end and "rw" in m.perms for m in maps)
        blocked, ignored, caught = tracee.signal_masks()
        assert signal.SIGUSR2 in blocked
        assert signal.SIGPIPE in ignored
        assert signal.SIGUSR1 in caught


# -- refusals -------------------------------------------------------------------


def test_refuses_bad_pids(spawn: Callable[..., subprocess.Popen[str]]) -> None:
    for pid, message in [
        (0, "positive"),
        (-5, "positive"),
        (1, "init process"),
        (os.getpid(), "ekiden-trace itself"),
        (os.getppid(), "parent of ekiden-trace"),
    ]:
        with pytest.raises(TargetError, match=message):
            Tracee.seize(pid)
    gone = spawn("true")
    gone.wait()
    if not os.path.exists(f"/proc/{gone.pid}"):
        with pytest.raises(TargetError, match="no process with pid"):
            Tracee.seize(gone.pid)


def test_refuses_a_zombie(spawn: Callable[..., subprocess.Popen[str]]) -> None:
    proc = spawn("true")
    wait_until(lambda: state(proc.pid) == "Z", "the child to become a zombie")
    with pytest.raises(TargetError, match="zombie"):
        Tracee.seize(proc.pid)


def test_refuses_a_kernel_thread() -> None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or entry == "1":
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                kernel_thread = "Kthread:\t1\n" in f.read()
        except OSError:
            continue
        if kernel_thread:
            with pytest.raises(TargetError, match="kernel thread"):
                Tracee.seize(int(entry))
            return
    pytest.skip("no kernel thread is visible in this pid namespace")


def test_refuses_a_multithreaded_target(
    spawn: Callable[..., subprocess.Popen[str]], target_binary: Path
) -> None:
    proc = spawn(target_binary, "threads")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    with pytest.raises(TargetError, match="2 threads; multi-threaded targets are not supported"):
        Tracee.seize(proc.pid)
    (thread,) = (int(tid) for tid in os.listdir(f"/proc/{proc.pid}/task") if int(tid) != proc.pid)
    with pytest.raises(TargetError, match=f"is a thread of process {proc.pid}"):
        Tracee.seize(thread)
    assert tracer_pid(proc.pid) == 0


def test_refuses_an_already_traced_target(target: Target) -> None:
    with (
        Tracee.seize(target.pid),
        pytest.raises(TargetError, match=f"already traced by pid {os.getpid()}"),
    ):
        Tracee.seize(target.pid)
    assert target.ask("once").endswith(" once")


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_refuses_a_target_traced_by_strace(target: Target) -> None:
    strace = subprocess.Popen(
        ["strace", "-p", str(target.pid), "-o", os.devnull], stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: tracer_pid(target.pid) == strace.pid, "strace to attach")
        with pytest.raises(TargetError, match=rf"already traced by pid {strace.pid} \(strace\)"):
            Tracee.seize(target.pid)
    finally:
        strace.terminate()
        strace.wait()
    wait_until(lambda: tracer_pid(target.pid) == 0, "strace to detach")
    assert target.ask("free").endswith(" free")


# -- a dying tool -----------------------------------------------------------------


def test_killed_tracer_leaves_the_target_running(target: Target, tmp_path: Path) -> None:
    script = tmp_path / "hold.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from ekiden_trace.target.tracee import Tracee
            tracee = Tracee.seize(int(sys.argv[1]))
            tracee.nudge_syscall()
            print("held", flush=True)
            time.sleep(60)
            """
        )
    )
    wait_blocked(target.pid)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen(
        [sys.executable, str(script), str(target.pid)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert state(target.pid) == "t"
        holder.kill()
        holder.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert target.line() == "EINTR"
    assert target.ask("alive").endswith(" alive")
    assert tracer_pid(target.pid) == 0
