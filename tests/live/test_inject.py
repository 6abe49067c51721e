"""Injection against real processes: system calls, function calls, batch malloc, exec in place."""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from conftest import REPO, compile_marked, needs_ptrace, process_state, tracer_of

from ekiden_trace.binary.elf import ElfBinary
from ekiden_trace.target import images as inject_images
from ekiden_trace.target import inject, procfs
from ekiden_trace.target import ptrace as pt
from ekiden_trace.target.inject import InjectionError, Injector
from ekiden_trace.target.tracee import Tracee

pytestmark = needs_ptrace


TARGET_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ekiden.h"

__attribute__((used, noinline)) int add3(int a, int b, int c) { return a + b + c; }
__attribute__((used, noinline)) void crash(void) { *(volatile int *)8 = 1; }
__attribute__((used, noinline)) void spin(void) { for (;;) __asm__ volatile(""); }
__attribute__((used, noinline)) int raise_self(int sig) { return raise(sig); }

static void on_usr1(int sig) { (void)sig; write(1, "USR1\n", 5); }

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    int keep = open("/dev/null", O_RDONLY);
    int cloexec = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int other = open("/dev/null", O_RDONLY | O_CLOEXEC);
    printf("%d %d %d %d\n", (int)getpid(), keep, cloexec, other);
    char buf[256];
    for (;;) {
        EKIDEN_UPDATE_POINT(loop);
        ssize_t n = read(0, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        printf("echo %.*s", (int)n, buf);
    }
}
"""

CHILD_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "ekiden.h"

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("child %d", (int)getpid());
    for (int i = 0; i < argc; i++)
        printf(" [%s]", argv[i]);
    const char *value = getenv("EKIDEN_TEST");
    printf(" env=%s open:", value ? value : "-");
    for (int fd = 3; fd < 8; fd++)
        if (fcntl(fd, F_GETFD) != -1)
            printf(" %d", fd);
    printf("\n");
    char buf[256];
    for (;;) {
        EKIDEN_UPDATE_POINT(loop);
        ssize_t n = read(0, buf, sizeof buf);
        if (n <= 0)
            return 0;
        printf("child %.*s", (int)n, buf);
    }
}
"""


class Target:
    """The test program: stdin/stdout pipes, its pid and three fds it opened.

    It echoes each line after `prefix` ("echo ", or "child " once it runs the child).
    """

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.prefix = "echo "
        self.keep, self.cloexec, self.other = (int(f) for f in self.line().split()[1:])
        wait_blocked(self.pid)

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def ask(self, message: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(message + "\n")
        self.proc.stdin.flush()
        return self.line()


def wait_blocked(pid: int) -> None:
    deadline = time.monotonic() + 5
    while process_state(pid) != "S":
        assert time.monotonic() < deadline, f"process {pid} did not block"
        time.sleep(0.005)


def build(directory: Path, name: str, source: str) -> Path:
    (directory / f"{name}.c").write_text(source)
    return compile_marked(directory / f"{name}.c", directory / name, "-g", "-O2")


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the test programs")
    directory = tmp_path_factory.mktemp("inject")
    return {
        "target": build(directory, "target", TARGET_C),
        "child": build(directory, "child", CHILD_C),
    }


@pytest.fixture
def target(spawn: Callable[..., subprocess.Popen[str]], binaries: dict[str, Path]) -> Target:
    return Target(spawn(binaries["target"]))


@pytest.fixture
def tracee(target: Target) -> Iterator[Tracee]:
    """The target, seized; at the end released and checked to be running and answering."""
    traced = Tracee.seize(target.pid)
    try:
        yield traced
    finally:
        traced.release()
    assert tracer_of(target.pid) == 0
    assert target.ask("still there") == target.prefix + "still there"


def stop_gadget(tracee: Tracee) -> int:
    return inject.find_syscall_gadget(tracee, [inject.function_range(tracee.pid, "ekiden__stop")])


def stop_injector(tracee: Tracee) -> Injector:
    return Injector(tracee, stop_gadget(tracee))


def fd_has_cloexec(pid: int, fd: int) -> bool:
    flags = Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0]
    return bool(int(flags, 8) & os.O_CLOEXEC)


# -- the call loop ---------------------------------------------------------------


def test_call_loop_machine_code_is_what_its_comments_say() -> None:
    decoded = [
        f"{insn.mnemonic} {insn.op_str}".strip()
        for insn in Cs(CS_ARCH_X86, CS_MODE_64).disasm(inject.MAP_STUB, 0x1000)
    ]
    assert decoded == [
        "push rbx",
        "push r12",
        "push r13",
        "mov rbx, rdi",
        "mov r12, rsi",
        "mov r13, rdx",
        "test r12, r12",
        "je 0x1025",
        "mov rdi, qword ptr [rbx]",
        "call r13",
        "mov qword ptr [rbx], rax",
        "add rbx, 8",
        "dec r12",
        "jmp 0x100e",
        "pop r13",
        "pop r12",
        "pop rbx",
        "ret",
    ]
    assert sum(insn.size for insn in Cs(CS_ARCH_X86, CS_MODE_64).disasm(inject.MAP_STUB, 0)) == len(
        inject.MAP_STUB
    )


# -- system calls ------------------------------------------------------------------


def test_remote_getpid_leaves_registers_as_they_were(target: Target, tracee: Tracee) -> None:
    assert tracee.in_restartable_syscall()  # stopped inside read(): rax = -ERESTARTSYS
    before = bytes(tracee.regs())
    injector = stop_injector(tracee)
    assert injector.syscall(39) == target.pid
    assert bytes(tracee.regs()) == before
    assert tracee.stopped and tracee.pending_signal == 0
    assert process_state(target.pid) == "t"
    assert injector.syscall(3, 9999) == -9  # close(9999): -EBADF
    assert bytes(tracee.regs()) == before


def test_a_batch_of_system_calls_comes_to_rest_once(target: Target, tracee: Tracee) -> None:
    before = bytes(tracee.regs())
    injector = stop_injector(tracee)
    calls = [(39, ()), (3, (9999,)), (39, ())]  # getpid, close(9999), getpid
    assert injector.syscalls(calls) == [target.pid, -9, target.pid]
    assert bytes(tracee.regs()) == before
    assert tracee.stopped and tracee.pending_signal == 0
    assert injector.syscalls([]) == []
    with pytest.raises(ValueError, match="execve"):
        injector.syscalls([(inject.NR_EXECVE, (0, 0, 0))])


def test_one_parse_of_a_library_names_addresses_as_the_elf_reader_does(target: Target) -> None:
    (libc,) = [i for i in inject_images.mapped_images(target.pid) if "libc.so" in i.path]
    with ElfBinary(libc.path) as elf:
        assert set(libc.image.symbols) == set(elf.symbols())
    assert libc.image.functions["malloc"].addr == next(
        s.addr for s in libc.image.symbols if s.name == "malloc"
    )


def test_the_marks_gadget_is_decoded_from_the_file(
    target: Target, tracee: Tracee, binaries: dict[str, Path]
) -> None:
    path = str(binaries["target"])
    (program,) = [i for i in inject_images.mapped_images(target.pid) if i.path == path]
    gadget = Injector.for_tracee(tracee, path, "ekiden__stop", program.bias).gadget
    assert gadget == stop_gadget(tracee)
    # Where the process's code is not the file's, any other gadget is used.
    injector = Injector.for_tracee(tracee, path, "ekiden__stop", program.bias + 16)
    elsewhere = injector.gadget
    start, end = inject.function_range(target.pid, "ekiden__stop")
    assert not start <= elsewhere < end
    assert injector.syscall(39) == target.pid


def test_gadgets_in_the_program_and_in_libc(target: Target, tracee: Tracee) -> None:
    start, end = inject.function_range(target.pid, "ekiden__stop")
    ours = inject.find_syscall_gadget(tracee, [(start, end)])
    assert start <= ours < end
    assert inject.is_syscall_instruction(tracee, ours, start)
    assert not inject.is_syscall_instruction(tracee, ours + 1, start)
    assert not inject.is_syscall_instruction(tracee, start, start)

    libc = inject.find_syscall_gadget(tracee)
    (mapping,) = [m for m in tracee.maps() if m.start <= libc < m.end]
    assert "libc.so" in mapping.path and "x" in mapping.perms
    assert inject.is_syscall_instruction(tracee, libc)
    assert Injector(tracee, libc).syscall(39) == target.pid

    # Memory without symbols (the vDSO) is scanned instead.
    vdso = inject_images.scan_gadget(tracee.read, [m for m in tracee.maps() if m.path == "[vdso]"])
    assert vdso is not None and inject.is_syscall_instruction(tracee, vdso)
    assert Injector(tracee, vdso).syscall(39) == target.pid


def test_remote_mmap_and_munmap_show_in_maps(target: Target, tracee: Tracee) -> None:
    injector = stop_injector(tracee)
    addr = injector.mmap(3 * mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE)
    # The kernel may merge it with a neighbouring anonymous mapping.
    (mapping,) = [m for m in tracee.maps() if m.start <= addr < m.end]
    assert mapping.end >= addr + 3 * mmap.PAGESIZE and mapping.perms.startswith("rw-")
    tracee.write(addr, b"written")
    assert tracee.read(addr, 7) == b"written"
    injector.munmap(addr, 3 * mmap.PAGESIZE)
    assert not [m for m in tracee.maps() if m.start <= addr < m.end]
    with pytest.raises(InjectionError, match=r"mmap of .* failed with EINVAL"):
        injector.mmap(0, mmap.PROT_READ)


def test_clear_and_restore_cloexec(target: Target, tracee: Tracee) -> None:
    injector = stop_injector(tracee)
    fds = procfs.open_fds(target.pid)
    assert fds == [0, 1, 2, target.keep, target.cloexec, target.other]
    assert injector.clear_cloexec([target.keep, target.cloexec]) == [target.cloexec]
    assert not fd_has_cloexec(target.pid, target.cloexec)
    assert fd_has_cloexec(target.pid, target.other)
    assert injector.fcntl(target.cloexec, 1) == 0  # F_GETFD
    injector.restore_cloexec([target.cloexec])
    assert fd_has_cloexec(target.pid, target.cloexec)
    with pytest.raises(InjectionError, match="not open"):
        injector.clear_cloexec([99])


def test_signals_arriving_during_an_injection_are_delivered_afterwards(
    target: Target, tracee: Tracee
) -> None:
    injector = stop_injector(tracee)
    os.kill(target.pid, signal.SIGUSR1)  # pending while stopped: seen when we step
    assert injector.syscall(39) == target.pid
    raise_self = inject.find_function(target.pid, "raise_self")
    assert injector.call(raise_self, signal.SIGUSR1) == 0
    tracee.release()
    assert target.line() == "USR1"  # one USR1: the second arrived while the first was pending
    assert target.ask("after") == "echo after"


def test_injection_in_a_signal_delivery_stop_keeps_that_signal(
    target: Target, tracee: Tracee
) -> None:
    injector = stop_injector(tracee)
    tracee.cont()
    subprocess.run(["kill", "-USR1", str(target.pid)], check=True)
    stop = tracee.wait_stop(5)
    assert (stop.kind, stop.signo) == ("signal", signal.SIGUSR1)
    info = bytes(pt.getsiginfo(target.pid))
    regs = bytes(tracee.regs())
    assert injector.syscall(39) == target.pid
    assert injector.call(inject.find_function(target.pid, "add3"), 1, 2, 3) == 6
    assert tracee.pending_signal == signal.SIGUSR1
    assert bytes(pt.getsiginfo(target.pid)) == info  # the sender is still kill(1), not us
    assert bytes(tracee.regs()) == regs
    tracee.cont(tracee.pending_signal)
    assert target.line() == "USR1"


# -- function calls ------------------------------------------------------------------


def test_remote_call_of_program_and_libc_functions(target: Target, tracee: Tracee) -> None:
    injector = stop_injector(tracee)
    before = bytes(tracee.regs())
    xstate = pt.getregset(target.pid, pt.NT_X86_XSTATE, 1 << 15)
    add3 = inject.find_function(target.pid, "add3")
    assert injector.call(add3, 1, 2, 3) == 6
    assert ctypes.c_int32(injector.call(add3, -10, 2, 3)).value == -5

    page = injector.mmap(mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE)
    tracee.write(page, b"hello from ekiden-trace\0")
    with pytest.raises(InjectionError, match="GNU indirect function"):
        inject.find_function(target.pid, "strlen")
    strlen = injector.resolve_function("strlen")
    assert injector.call(strlen, page) == len("hello from ekiden-trace")
    # Running on a scratch stack of our own works the same.
    assert injector.call(strlen, page, scratch=page + mmap.PAGESIZE) == 23
    injector.munmap(page, mmap.PAGESIZE)

    assert bytes(tracee.regs()) == before
    assert pt.getregset(target.pid, pt.NT_X86_XSTATE, 1 << 15) == xstate  # AVX state too
    with pytest.raises(InjectionError, match="no function no_such_function"):
        inject.find_function(target.pid, "no_such_function")


def test_a_crashing_call_is_reported_and_undone(target: Target, tracee: Tracee) -> None:
    injector = stop_injector(tracee)
    before = bytes(tracee.regs())
    crash = inject.find_function(target.pid, "crash")
    with pytest.raises(InjectionError, match=r"crashed with SIGSEGV at 0x[0-9a-f]+ \(in target\)"):
        injector.call(crash)
    assert bytes(tracee.regs()) == before
    with pytest.raises(InjectionError, match="crashed with SIGABRT"):
        injector.call(inject.find_function(target.pid, "abort"))
    assert bytes(tracee.regs()) == before
    assert tracee.pending_signal == 0


def test_a_call_that_never_returns_times_out(target: Target, tracee: Tracee) -> None:
    injector = stop_injector(tracee)
    before = bytes(tracee.regs())
    spin = inject.find_function(target.pid, "spin")
    with pytest.raises(InjectionError, match=r"did not complete within 0\.3 s"):
        injector.call(spin, timeout=0.3)
    assert bytes(tracee.regs()) == before
    assert tracee.stopped

    # A system call that blocks (read on the empty stdin pipe) is interrupted the same way.
    buffer = injector.mmap(mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE)
    with pytest.raises(InjectionError, match=r"system call 0 .* did not complete within 0\.3 s"):
        injector.syscall(0, 0, buffer, 16, timeout=0.3)
    injector.munmap(buffer, mmap.PAGESIZE)
    assert bytes(tracee.regs()) == before


def test_batch_malloc_uses_the_programs_own_allocator(target: Target, tracee: Tracee) -> None:
    injector = stop_injector(tracee)
    malloc = inject.find_function(target.pid, "malloc")
    sizes = [1 + (i * 37) % 500 for i in range(10_000)]
    pointers = injector.batch_malloc(malloc, sizes)
    assert len(pointers) == len(sizes) and len(set(pointers)) == len(sizes)
    assert all(p and p % 16 == 0 for p in pointers)
    usable = inject.find_function(target.pid, "malloc_usable_size")
    for index in (0, 1, 4999, 9999):
        assert injector.call(usable, pointers[index]) >= sizes[index]
        tracee.write(pointers[index], b"x" * sizes[index])
    assert not [m for m in tracee.maps() if "x" in m.perms and not m.path]  # the loop is gone
    free = inject.find_function(target.pid, "free")
    for pointer in pointers:
        injector.call(free, pointer)
    with pytest.raises(InjectionError, match="out of memory: malloc returned NULL for 1 of 3"):
        injector.batch_malloc(malloc, [16, 1 << 62, 32])


def test_a_batch_call_that_crashes_leaves_nothing_behind(target: Target, tracee: Tracee) -> None:
    before, maps = bytes(tracee.regs()), tracee.maps()
    crash = inject.find_function(target.pid, "crash")
    with pytest.raises(InjectionError, match="crashed with SIGSEGV"):
        stop_injector(tracee).batch_call(crash, [1, 2])
    assert bytes(tracee.regs()) == before
    assert tracee.maps() == maps  # the call loop's mapping is gone


# -- exec in place ---------------------------------------------------------------------


def test_exec_in_place_keeps_pid_and_fds(
    target: Target, tracee: Tracee, binaries: dict[str, Path]
) -> None:
    injector = stop_injector(tracee)
    cleared = injector.clear_cloexec([target.keep, target.cloexec])
    argv = [b"renamed", b"", b"two words"]
    envp = [b"EKIDEN_TEST=yes", b"EMPTY="]
    injector.exec_in_place(str(binaries["child"]), argv, envp)
    assert tracee.stopped and tracee.pending_signal == 0
    assert os.readlink(f"/proc/{target.pid}/exe") == str(binaries["child"])
    assert procfs.cmdline(target.pid) == argv
    assert procfs.environ(target.pid) == envp
    # Before libc is loaded, the fallback gadget is in ld.so.
    early = inject.find_syscall_gadget(tracee)
    (mapping,) = [m for m in tracee.maps() if m.start <= early < m.end]
    assert os.path.basename(mapping.path).startswith("ld-")
    assert Injector(tracee, early).syscall(39) == target.pid
    # The new image has its own ekiden__stop gadget; FD_CLOEXEC goes back on.
    stop_injector(tracee).restore_cloexec(cleared)
    assert fd_has_cloexec(target.pid, target.cloexec)
    tracee.release()
    assert target.line() == (
        f"child {target.pid} [renamed] [] [two words] env=yes open: {target.keep} {target.cloexec}"
    )
    target.prefix = "child "


def test_exec_failures_leave_the_old_program_running(
    target: Target, tracee: Tracee, tmp_path: Path
) -> None:
    injector = stop_injector(tracee)
    before = bytes(tracee.regs())
    maps = tracee.maps()
    script = tmp_path / "not-a-program"
    script.write_bytes(b"\x7fELF garbage")
    script.chmod(0o755)
    data = tmp_path / "data"
    data.write_text("not executable")
    for path, code in ((tmp_path / "missing", "ENOENT"), (data, "EACCES"), (script, "ENOEXEC")):
        with pytest.raises(InjectionError, match=f"failed with {code}"):
            injector.exec_in_place(str(path), [b"x"], [])
        assert bytes(tracee.regs()) == before
        assert tracee.maps() == maps  # the scratch area is gone again
    assert os.readlink(f"/proc/{target.pid}/exe").endswith("/target")


def test_exec_with_an_environment_larger_than_the_stack_room(
    target: Target, tracee: Tracee, binaries: dict[str, Path]
) -> None:
    injector = stop_injector(tracee)
    envp = [f"BIG{i}=".encode() + bytes([65 + i]) * 100_000 for i in range(15)]  # 1.5 MB
    maps = tracee.maps()
    with pytest.raises(InjectionError, match="failed with ENOENT"):
        injector.exec_in_place("/nonexistent/program", [b"x"], envp)
    assert tracee.maps() == maps  # its own mapping is gone again
    injector.exec_in_place(str(binaries["child"]), [b"big"], envp)
    assert procfs.environ(target.pid) == envp
    tracee.release()
    assert target.line() == f"child {target.pid} [big] env=- open: {target.keep}"
    target.prefix = "child "


def test_cmdline_and_environ_are_exact_bytes(
    spawn: Callable[..., subprocess.Popen[str]], binaries: dict[str, Path]
) -> None:
    proc = spawn(binaries["child"], "one", "", "three", env={"A": "1", "EMPTY": ""})
    assert proc.stdout is not None and proc.stdout.readline().startswith("child")
    assert procfs.cmdline(proc.pid) == [str(binaries["child"]).encode(), b"one", b"", b"three"]
    assert procfs.environ(proc.pid) == [b"A=1", b"EMPTY="]


# -- a tool that dies between injections --------------------------------------------------

DYING_TOOL = textwrap.dedent(
    """
    import os, signal, sys
    from ekiden_trace.target import inject
    from ekiden_trace.target import images as inject_images
    from ekiden_trace.target.tracee import Tracee

    pid, mode = int(sys.argv[1]), sys.argv[2]
    tracee = Tracee.seize(pid)
    if mode == "signal":
        tracee.cont()
        os.kill(pid, signal.SIGUSR1)
        assert tracee.wait_stop(5).signo == signal.SIGUSR1
    gadget = inject.find_syscall_gadget(tracee, [inject.function_range(pid, "ekiden__stop")])
    injector = inject.Injector(tracee, gadget)
    assert injector.syscall(39) == pid
    assert injector.call(inject.find_function(pid, "add3"), 1, 2, 3) == 6
    os._exit(0)  # no release: the kernel detaches
    """
)


@pytest.mark.parametrize("mode", ["interrupt", "signal"])
def test_target_survives_a_tool_that_dies_after_injecting(target: Target, mode: str) -> None:
    subprocess.run(
        [sys.executable, "-c", DYING_TOOL, str(target.pid), mode], cwd=REPO, check=True, timeout=30
    )
    # No trap flag was left set by the single-steps (it would kill the target
    # with SIGTRAP at its next return to user space, i.e. at this read).
    # In "signal" mode it rested in a SIGUSR1 delivery-stop, whose signal the
    # kernel drops when the tracer goes away, as it would without injections.
    assert tracer_of(target.pid) == 0
    assert target.ask("alive") == "echo alive"
    assert target.proc.poll() is None
