"""The live process: seize, stops and the wait loop, registers, memory, release.

A `Tracee` is seized without PTRACE_O_EXITKILL and never arms breakpoints, so
if this tool dies the kernel detaches and the target simply runs on.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import signal
import time
from array import array
from collections.abc import Collection, Container, Iterator, Sequence
from dataclasses import dataclass, replace
from types import TracebackType

from ekiden_trace.errors import TargetError, TargetExited, WaitTimeout
from ekiden_trace.native import syscalls as native
from ekiden_trace.target import procfs
from ekiden_trace.target import ptrace as pt
from ekiden_trace.target.procfs import Mapping

_PAGE = mmap.PAGESIZE
_IOV_MAX = 1024
_WORD_MASK = (1 << 64) - 1
_EINTR_RAX = -errno.EINTR & _WORD_MASK
# -ERESTARTSYS, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK: calls the kernel restarts after a
# signal, which a nudge makes return EINTR.  Not -ERESTARTNOINTR: those calls (fork,
# clone...) must never fail with EINTR, and programs do not retry them.
_RESTART_RAX = frozenset(-e & _WORD_MASK for e in (512, 514, 516))
_GROUP_STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
# One sigtimedwait never sleeps longer than this, so a SIGCHLD taken by
# another thread of the tool costs at most this much latency.
_WAIT_SLICE = 0.1
_SIGCHLD = frozenset({signal.SIGCHLD})
# The raw wait status of a system-call stop (PTRACE_O_TRACESYSGOOD: SIGTRAP | 0x80).
_SYSCALL_STOP_STATUS = (signal.SIGTRAP | 0x80) << 8 | 0x7F
# Offsets in struct user (user_regs_struct comes first) for PTRACE_PEEKUSER.
_USER_RAX = 8 * 10
_USER_ORIG_RAX = 8 * 15
_ENOSYS_RAX = -errno.ENOSYS & _WORD_MASK  # rax at a system-call entry stop
_STOP_TIMEOUT = 5.0

_libc = ctypes.CDLL(None, use_errno=True)
_process_vm_readv = _libc.process_vm_readv
_process_vm_writev = _libc.process_vm_writev
for _vm_call in (_process_vm_readv, _process_vm_writev):
    _vm_call.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    _vm_call.restype = ctypes.c_ssize_t


class _Iovec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class MemoryAccessError(OSError):
    """Target memory could not be read or written; `address` is the first bad byte."""

    def __init__(self, err: int, message: str, address: int) -> None:
        super().__init__(err, message)
        self.address = address


@dataclass(frozen=True)
class Stop:
    """One state change reported by waitpid.

    kind is 'signal' (signal-delivery-stop), 'interrupt' (PTRACE_INTERRUPT),
    'group' (group-stop), 'exec', 'syscall', 'exited', 'killed', or 'event'
    (another PTRACE_EVENT, only if someone enabled more options).
    signo is the stop signal, the killing signal for 'killed', 0 for 'exited'.
    """

    kind: str
    signo: int
    event: int
    status: int
    siginfo: pt.siginfo | None = None

    @property
    def exit_code(self) -> int | None:
        """The exit status for an 'exited' stop, else None."""
        return os.WEXITSTATUS(self.status) if self.kind == "exited" else None


def decode_status(status: int) -> Stop:
    """Turn a raw wait status of a seized tracee into a Stop (without siginfo)."""
    if os.WIFEXITED(status):
        return Stop("exited", 0, 0, status)
    if os.WIFSIGNALED(status):
        return Stop("killed", os.WTERMSIG(status), 0, status)
    signo = os.WSTOPSIG(status)
    event = status >> 16
    if event == pt.PTRACE_EVENT_STOP:
        kind = "group" if signo in _GROUP_STOP_SIGNALS else "interrupt"
    elif event == pt.PTRACE_EVENT_EXEC:
        kind = "exec"
    elif event:
        kind = "event"
    elif signo == signal.SIGTRAP | 0x80:
        kind = "syscall"
    else:
        kind = "signal"
    return Stop(kind, signo, event, status)


def _iovecs(spans: Sequence[tuple[int, int]]) -> array:
    """(addr, size) spans as an array of struct iovec."""
    flat = array("Q")
    for addr, size in spans:
        flat.append(addr)
        flat.append(size)
    return flat


@contextlib.contextmanager
def _sigchld_blocked() -> Iterator[None]:
    """Block SIGCHLD in this thread for a run of waits, and unblock it afterwards if it was
    not blocked before: children the tool spawns later must not inherit a blocked SIGCHLD."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGCHLD)
    try:
        yield
    finally:
        if signal.SIGCHLD not in old_mask:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGCHLD)


@contextlib.contextmanager
def sharing_cpu(pid: int) -> Iterator[None]:
    """Run this thread and process `pid` on one CPU meanwhile (the one this thread is on),
    then give both their CPU sets back (to every thread `pid` has by then).

    A tracer and its stopped tracee hand over to each other hundreds of times in an
    update; on one CPU a hand-over is a context switch, across two it wakes the other
    CPU, which costs tens of microseconds in a virtual machine and more under load.
    Does nothing when a CPU set cannot be read or changed (cpusets, permissions).
    """
    pinned = _pin_together(pid)
    try:
        yield
    finally:
        if pinned is not None:
            _unpin(pid, *pinned)


def _pin_together(pid: int) -> tuple[set[int], set[int]] | None:
    """Pin this thread and `pid` to this thread's CPU; their CPU sets before, or None."""
    try:
        ours, theirs = os.sched_getaffinity(0), os.sched_getaffinity(pid)
    except OSError:
        return None
    cpu = _libc.sched_getcpu()
    if cpu not in ours & theirs:
        return None
    try:
        os.sched_setaffinity(pid, {cpu})
        os.sched_setaffinity(0, {cpu})
    except OSError:
        _unpin(pid, ours, theirs)
        return None
    return ours, theirs


def _unpin(pid: int, ours: set[int], theirs: set[int]) -> None:
    os.sched_setaffinity(0, ours)
    give_cpus(pid, theirs)


def give_cpus(pid: int, cpus: set[int]) -> None:
    """Set the CPU set of every thread process `pid` has (skipping any that end meanwhile)."""
    with contextlib.suppress(OSError):
        for task in procfs.tasks(pid):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(task, cpus)


def _restartable(regs: pt.user_regs_struct) -> bool:
    """Stopped in a system call (orig_rax >= 0) that returned a -ERESTART* code."""
    return not regs.orig_rax >> 63 and regs.rax in _RESTART_RAX


def check_traceable(pid: int) -> None:
    """Refuse, before touching it, a pid that we must not or cannot trace."""
    if pid <= 0:
        raise TargetError(f"there is no process with pid {pid}; pids are positive numbers.")
    if pid == 1:
        raise TargetError(
            "pid 1 is the init process of its pid namespace; tracing it is not supported "
            "(signals behave differently for init and a mistake would bring everything down)."
        )
    if pid == os.getpid() or procfs.is_own_thread(pid):
        raise TargetError(
            f"pid {pid} is ekiden-trace itself; give the pid of the program to update."
        )
    if pid == os.getppid():
        raise TargetError(
            f"pid {pid} is the parent of ekiden-trace (probably your shell); "
            "give the pid of the program to update."
        )
    try:
        status = procfs.status(pid)
        threads = procfs.thread_count(pid)
    except FileNotFoundError:
        raise TargetError(f"no process with pid {pid}; check the pid with ps.") from None
    tgid = int(status.get("Tgid", pid))
    if tgid != pid:
        raise TargetError(f"pid {pid} is a thread of process {tgid}; give the process id {tgid}.")
    if status.get("State", "")[:1] in ("Z", "X"):
        raise TargetError(
            f"process {pid} has exited (it is a zombie waiting for its parent); nothing to update."
        )
    # Kthread (kernel 6.0+), not an empty cmdline: a process in the middle of
    # an exec briefly has an empty cmdline too.
    if status.get("Kthread") == "1":
        raise TargetError(f"process {pid} is a kernel thread; only user programs can be updated.")
    tracer = int(status.get("TracerPid", "0"))
    if tracer:
        raise TargetError(
            f"process {pid} is already traced by pid {tracer} ({procfs.comm(tracer)}); "
            "wait until that tool is done, or detach that debugger."
        )
    if threads > 1:
        raise TargetError(
            f"process {pid} has {threads} threads; multi-threaded targets are not supported yet."
        )


def _tracer_of(pid: int) -> int:
    """The pid tracing `pid`, 0 when none (or when it cannot be read)."""
    try:
        return int(procfs.status(pid).get("TracerPid", "0"))
    except (OSError, ValueError):
        return 0


def _ptrace_scope() -> str:
    scope = procfs.ptrace_scope()
    return "Yama is not active" if scope is None else f"kernel.yama.ptrace_scope is {scope}"


def _seize_error(pid: int, exc: OSError) -> TargetError:
    tracer = _tracer_of(pid)
    if exc.errno == errno.EPERM and tracer:  # another tracer came first: not the kernel's rule
        return TargetError(
            f"process {pid} is already traced by pid {tracer} ({procfs.comm(tracer)}); "
            "wait until that tool is done, or detach that debugger."
        )
    if exc.errno == errno.EPERM:
        return TargetError(
            f"the kernel refused to trace process {pid} ({exc.strerror}); you must own the "
            f"process or be root, and kernel.yama.ptrace_scope must allow it ({_ptrace_scope()})."
        )
    if exc.errno == errno.ESRCH:
        return TargetError(f"process {pid} exited before it could be traced.")
    return TargetError(f"cannot trace process {pid}: {exc.strerror}.")


class Tracee:
    """A seized single-threaded process. Create with `Tracee.seize(pid)`.

    State: `alive` (False once it exited or was killed), `stopped` (in a
    ptrace-stop we know of), `pending_signal` (a signal intercepted at a
    signal-delivery-stop and not yet delivered; cont(0) discards it).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.alive = True
        self.stopped = False
        self.pending_signal = 0
        self._attached = False
        self._mem_fd: int | None = None

    # -- attaching and releasing -------------------------------------------

    @classmethod
    def seize(cls, pid: int, timeout: float | None = _STOP_TIMEOUT) -> Tracee:
        """Validate `pid`, seize it and bring it into a known ptrace-stop.

        The stop is usually 'interrupt'; it may be a 'signal' or 'group' stop
        that was already on its way, and then the interrupt is reported later.
        """
        check_traceable(pid)
        try:
            pt.seize(pid, pt.PTRACE_O_TRACEEXEC | pt.PTRACE_O_TRACESYSGOOD)
        except OSError as exc:
            raise _seize_error(pid, exc) from None
        tracee = cls(pid)
        tracee._attached = True
        try:
            tracee.interrupt()
            tracee.wait_stop(timeout)
            if not tracee.alive:
                raise TargetExited(f"process {pid} exited while it was being attached.")
            threads = procfs.thread_count(pid)
            if threads > 1:
                raise TargetError(
                    f"process {pid} has {threads} threads; "
                    "multi-threaded targets are not supported yet."
                )
        except BaseException:
            tracee.release()
            raise
        return tracee

    def release(self, timeout: float | None = _STOP_TIMEOUT) -> None:
        """Leave the target as it would be without us; safe to call any time, idempotent.

        A running tracee is interrupted first; an intercepted signal is
        re-delivered on detach. If it cannot be stopped within `timeout`
        (e.g. uninterruptible sleep), the kernel detaches it when this tool exits.
        """
        try:
            while self._attached and self.alive:
                if self.stopped:
                    try:
                        self.detach(self.pending_signal)
                    except ProcessLookupError:  # killed meanwhile: collect its exit
                        self.stopped = False
                else:
                    with contextlib.suppress(ProcessLookupError):
                        pt.interrupt(self.pid)
                    self.wait_stop(timeout)
        except (WaitTimeout, TargetExited):
            pass
        finally:
            self._close_mem()

    def __enter__(self) -> Tracee:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # -- stopping and resuming ---------------------------------------------

    def interrupt(self) -> None:
        """Ask a running tracee to stop; collect the stop with wait_stop()."""
        if not self.stopped:
            pt.interrupt(self.pid)

    def cont(self, signo: int = 0) -> None:
        """Resume, delivering `signo` (pass `pending_signal` to keep an intercepted signal)."""
        pt.cont(self.pid, signo)
        self._resumed()

    def syscall(self, signo: int = 0) -> None:
        """Resume until the next system call entry or exit (a 'syscall' stop)."""
        pt.syscall(self.pid, signo)
        self._resumed()

    def listen(self) -> None:
        """From a group-stop: stay stopped, but report SIGCONT or an interrupt."""
        pt.listen(self.pid)
        self._resumed()

    def detach(self, signo: int = 0) -> None:
        """Detach from a stopped tracee, delivering `signo`."""
        pt.detach(self.pid, signo)
        self._resumed()
        self._attached = False
        self._close_mem()

    def _resumed(self) -> None:
        self.stopped = False
        self.pending_signal = 0

    def _gone(self) -> None:
        self.alive = False
        self._attached = False
        self._resumed()
        self._close_mem()

    def wait_stop(self, timeout: float | None = None) -> Stop:
        """Wait for the next state change; raise WaitTimeout after `timeout` seconds.

        An exit or a kill is returned (kind 'exited'/'killed') and sets alive to False.
        """
        if not self.alive:
            raise TargetExited(f"process {self.pid} has already exited.")
        deadline = None if timeout is None else time.monotonic() + timeout
        with _sigchld_blocked():
            return self._stopped_at(self._wait_status(deadline))

    def run_syscalls(
        self, watched: Collection[int], deadline: float, signo: int = 0, *, cont: bool = False
    ) -> Stop:
        """Resume under PTRACE_SYSCALL (delivering `signo`) and step over system-call stops
        until any other stop, or the entry of a system call numbered in `watched`, which is
        returned as a 'syscall' stop before the call runs.  WaitTimeout at `deadline`
        (a time.monotonic() value).  With `cont`, the first resume is a PTRACE_CONT: no
        system-call stop until the next other stop.

        Made for a program's start-up, a run of system calls: SIGCHLD stays blocked
        throughout, and the stops nobody watches are stepped over in the compiled core
        when it is there (native/syscalls.c), else here.
        """
        if not self.alive:
            raise TargetExited(f"process {self.pid} has already exited.")
        with _sigchld_blocked():
            started = time.monotonic()
            self._resumed()  # from here it may run (and an interrupting signal find it so)
            stepped = native.run_syscalls(self.pid, watched, cont, signo, deadline)
            if stepped is not None:
                return self._native_stop(stepped, time.monotonic() - started)
            resume = self.cont if cont else self.syscall
            while True:
                resume(signo)
                resume, signo = self.syscall, 0
                status = self._wait_status(deadline)
                if status != _SYSCALL_STOP_STATUS:
                    return self._stopped_at(status)
                self.stopped = True
                if self._entering(watched):
                    return decode_status(status)

    def _native_stop(self, status: int, waited: float) -> Stop:
        """The Stop for what native.run_syscalls returned: a wait status, or one of its
        failures after `waited` seconds."""
        if status == native.TIMEOUT:
            raise WaitTimeout(f"process {self.pid} did not stop within {waited:.3g} s.")
        if status == native.GONE:
            self._gone()
            raise TargetExited(f"process {self.pid} is no longer traced by ekiden-trace.")
        if status == native.ERROR:
            reason = os.strerror(ctypes.get_errno())
            raise TargetError(f"resuming process {self.pid} failed: {reason}.")
        if status == _SYSCALL_STOP_STATUS:
            self.stopped = True
            return decode_status(status)
        return self._stopped_at(status)

    def _entering(self, watched: Container[int]) -> bool:
        """At a system-call stop: whether it is the entry of a call in `watched`."""
        if pt.peekuser(self.pid, _USER_ORIG_RAX) not in watched:
            return False
        return pt.peekuser(self.pid, _USER_RAX) == _ENOSYS_RAX  # the entry, not the exit

    def _stopped_at(self, status: int) -> Stop:
        """The Stop for a wait status, with the tracee's state updated to match."""
        stop = decode_status(status)
        if stop.kind in ("exited", "killed"):
            self._gone()
            return stop
        self.stopped = True
        if stop.kind == "signal":
            self.pending_signal = stop.signo
            stop = replace(stop, siginfo=pt.getsiginfo(self.pid))
        elif stop.kind == "exec":
            self._close_mem()  # the old handle sees the old address space
        return stop

    def _wait_status(self, deadline: float | None) -> int:
        """waitpid(WNOHANG) in a loop, sleeping in sigtimedwait on SIGCHLD in between;
        SIGCHLD must be blocked (_sigchld_blocked), so a state change after a waitpid
        leaves it pending and none is missed."""
        started = time.monotonic()
        while True:
            try:
                wpid, status = os.waitpid(self.pid, os.WNOHANG | pt.WALL)
            except ChildProcessError:
                self._gone()
                raise TargetExited(
                    f"process {self.pid} is no longer traced by ekiden-trace."
                ) from None
            if wpid:
                return status
            left = _WAIT_SLICE if deadline is None else deadline - time.monotonic()
            if left <= 0:
                waited = time.monotonic() - started
                raise WaitTimeout(f"process {self.pid} did not stop within {waited:.3g} s.")
            signal.sigtimedwait(_SIGCHLD, min(left, _WAIT_SLICE))

    # -- registers and system calls ----------------------------------------

    def regs(self) -> pt.user_regs_struct:
        """The general-purpose registers (tracee must be stopped)."""
        return pt.getregs(self.pid)

    def set_regs(self, regs: pt.user_regs_struct) -> None:
        """Set the general-purpose registers (tracee must be stopped)."""
        pt.setregs(self.pid, regs)

    def in_restartable_syscall(self) -> bool:
        """True when stopped inside a blocking system call the kernel would restart."""
        return _restartable(self.regs())

    def nudge_syscall(self) -> bool:
        """Make an interrupted blocking call return EINTR on resume; True if one was nudged.

        The program then sees EINTR, as if a signal handler had run.
        """
        regs = self.regs()
        if not _restartable(regs):
            return False
        regs.rax = _EINTR_RAX
        self.set_regs(regs)
        return True

    # -- memory --------------------------------------------------------------

    def read(self, addr: int, size: int) -> bytes:
        """Read `size` bytes at `addr`; MemoryAccessError names the first unreadable byte."""
        return self.read_many([(addr, size)])[0]

    def read_many(self, spans: Sequence[tuple[int, int]]) -> list[bytes]:
        """Read many (addr, size) spans with one process_vm_readv per 1024 spans."""
        out: list[bytes] = []
        for first in range(0, len(spans), _IOV_MAX):
            out.extend(self._readv(spans[first : first + _IOV_MAX], first))
        return out

    def _readv(self, spans: Sequence[tuple[int, int]], first: int) -> list[bytes]:
        remote = _iovecs(spans)
        total = sum(remote[1::2])
        if not total:
            return [b""] * len(spans)
        buf = bytearray(total)
        local = _Iovec(ctypes.addressof((ctypes.c_char * total).from_buffer(buf)), total)
        got = _process_vm_readv(
            self.pid, ctypes.byref(local), 1, remote.buffer_info()[0], len(spans), 0
        )
        if got < 0:
            err = ctypes.get_errno()
            if err != errno.EFAULT:
                raise OSError(err, f"cannot read memory of process {self.pid}: {os.strerror(err)}")
            got = 0
        if got < total:
            self._raise_short_read(spans, first, got)
        view = memoryview(buf)
        out = []
        offset = 0
        for _, size in spans:
            out.append(view[offset : offset + size].tobytes())
            offset += size
        return out

    def _raise_short_read(self, spans: Sequence[tuple[int, int]], first: int, got: int) -> None:
        offset = 0
        for index, (addr, size) in enumerate(spans):
            if got < offset + size:
                bad = addr + got - offset
                where = f" (span {first + index} of the batch)" if len(spans) > 1 else ""
                raise MemoryAccessError(
                    errno.EFAULT,
                    f"cannot read {size} bytes at {addr:#x}{where} in process {self.pid}: "
                    f"{bad:#x} is not mapped or not readable",
                    bad,
                )
            offset += size

    def read_word(self, addr: int) -> int:
        """Read an unsigned 64-bit little-endian word."""
        return int.from_bytes(self.read(addr, 8), "little")

    def read_cstring(self, addr: int, limit: int = 65536) -> bytes:
        """Read a NUL-terminated string (without the NUL), at most `limit` bytes.

        Reads page by page so a string that ends just before unmapped memory is
        read; one that runs into unmapped memory raises MemoryAccessError.
        """
        parts: list[bytes] = []
        got = 0
        while got < limit:
            here = addr + got
            chunk_size = min(_PAGE - here % _PAGE, limit - got)
            try:
                chunk = self.read(here, chunk_size)
            except MemoryAccessError as exc:
                raise MemoryAccessError(
                    errno.EFAULT,
                    f"the string at {addr:#x} in process {self.pid} runs into unreadable "
                    f"memory at {exc.address:#x} before its NUL",
                    exc.address,
                ) from None
            nul = chunk.find(0)
            if nul >= 0:
                parts.append(chunk[:nul])
                break
            parts.append(chunk)
            got += chunk_size
        return b"".join(parts)

    def write(self, addr: int, data: bytes) -> None:
        """Write `data` at `addr` through the process's mem file (works on read-only pages too)."""
        fd = self._mem()
        view = memoryview(data)
        done = 0
        while done < len(view):
            err = errno.EIO
            try:
                n = os.pwrite(fd, view[done:], addr + done)
            except OSError as exc:
                err, n = exc.errno or errno.EIO, 0
            if not n:
                raise MemoryAccessError(
                    err,
                    f"cannot write {len(view)} bytes at {addr:#x} in process {self.pid}: "
                    f"{addr + done:#x} is not mapped",
                    addr + done,
                )
            done += n

    def write_many(self, spans: Sequence[tuple[int, bytes]]) -> None:
        """Write many (addr, data) spans with one process_vm_writev per 1024 spans.

        A batch the call cannot write whole (read-only or unmapped pages) is written
        span by span with write(), which reports the first span that fails.
        """
        for first in range(0, len(spans), _IOV_MAX):
            batch = spans[first : first + _IOV_MAX]
            data = b"".join(chunk for _, chunk in batch)
            remote = _iovecs([(addr, len(chunk)) for addr, chunk in batch])
            local = _Iovec(ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value, len(data))
            done = _process_vm_writev(
                self.pid, ctypes.byref(local), 1, remote.buffer_info()[0], len(batch), 0
            )
            if done != len(data):
                for addr, chunk in batch:
                    self.write(addr, chunk)

    def write_word(self, addr: int, value: int) -> None:
        """Write a 64-bit little-endian word (negative values in two's complement)."""
        self.write(addr, (value & _WORD_MASK).to_bytes(8, "little"))

    def _mem(self) -> int:
        if self._mem_fd is None:
            self._mem_fd = procfs.open_mem(self.pid)
        return self._mem_fd

    def _close_mem(self) -> None:
        if self._mem_fd is not None:
            os.close(self._mem_fd)
            self._mem_fd = None

    # -- procfs views ----------------------------------------------------------

    def maps(self) -> list[Mapping]:
        """The memory mappings (procfs.maps)."""
        return procfs.maps(self.pid)

    def exe_path(self) -> str:
        """The path of the running executable."""
        return procfs.exe_link(self.pid)

    def signal_masks(self) -> tuple[set[int], set[int], set[int]]:
        """The (blocked, ignored, caught) signal numbers (procfs.signal_masks)."""
        return procfs.signal_masks(self.pid)
