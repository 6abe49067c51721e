"""Injection into a stopped tracee: system calls, function calls, exec in place.

Mechanism only, like CRIU's compel: the update policy lives elsewhere.
An `Injector` holds what injecting needs: the tracee, a `syscall` gadget of it,
a scratch area and the function addresses it looked up.

Every injection takes the `Tracee` in a ptrace-stop and returns with it in a
ptrace-stop, its general-purpose registers as they were (function calls also
put back the whole XSAVE state, since the called code may use vector
registers), unless the operation was a successful exec.  Failures restore
first, then raise `InjectionError` (or TargetExited when the process died).

No breakpoint is ever planted and no debug register is used:

* a system call runs by single-stepping one `syscall` instruction that the
  target already has (a gadget) with orig_rax = -1, so the kernel never
  "restarts" an interrupted call of the program over ours;
* a function call returns to an address in page 0, which the kernel never
  maps (vm.mmap_min_addr), and the SIGSEGV that return raises is caught.

Where the tracee rests afterwards, and what the caller must know:

* It rests where it was, in a stop that is harmless if this tool dies: when
  it had been in a signal-delivery-stop for signal S, it is again in one for
  S, with S's siginfo (`pending_signal` is S: cont(S) delivers it, cont(0)
  suppresses it); otherwise it is in a PTRACE_INTERRUPT stop.  To get there
  the tracee is resumed once more with PTRACE_CONT, which also clears the
  trap flag single-stepping set; no instruction of the program runs.
  An exec stop or a group-stop is thus left as an interrupt stop (after a
  group-stop the tracee is no longer job-control stopped).
* Signals that arrive while injected code runs are held back (suppressed at
  their delivery-stop) and sent again with kill(2) once the tracee is back
  at rest, so none is lost, but their siginfo then names the tool as sender.
  After a successful exec they reach the new program, as signals pending
  across an execve would.
* If the tool dies *during* an injection (tens of microseconds for a system
  call, the call's duration for a function; a batch is one injection), the
  target is left in the middle of injected code and will likely crash; between
  injections it is safe.
* A function call that times out or crashes is abandoned where it stands:
  registers come back, but locks or heap state it was changing do not.
* A tracee at a PTRACE_SYSCALL entry stop is refused: resuming from there
  would run or skip the program's own system call with our registers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import signal
import struct
import time
from array import array
from collections.abc import Iterator, Sequence

from ekiden_trace.errors import EkidenError, TargetExited, WaitTimeout
from ekiden_trace.target import images, procfs
from ekiden_trace.target import ptrace as pt
from ekiden_trace.target.tracee import MemoryAccessError, Stop, Tracee

__all__ = [
    "InjectionError",
    "Injector",
    "find_function",
    "find_syscall_gadget",
    "function_range",
    "is_syscall_instruction",
]

TIMEOUT = 5.0
BATCH_TIMEOUT = 60.0
SCRATCH_SIZE = 1 << 20  # the injector's scratch area

NR_MMAP = 9
NR_MPROTECT = 10
NR_MUNMAP = 11
NR_CLOSE = 3
NR_FCNTL = 72
NR_EXECVE = 59
NR_OPENAT = 257
NR_EXECVEAT = 322
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
NR_RT_SIGACTION = 13
NR_RT_SIGPROCMASK = 14
NR_RT_SIGTIMEDWAIT = 128

_PAGE = mmap.PAGESIZE
_WORD = (1 << 64) - 1
_RED_ZONE = 128
_STACK_SCRATCH = 64 << 10  # execve's strings and arrays up to this size go on the stack
_EFLAGS_DF = 1 << 10
_MAX_ERRNO = 4095
_ENOSYS_RAX = -errno.ENOSYS & _WORD  # rax at a PTRACE_SYSCALL entry stop
_XSTATE_MAX = 1 << 15
_MAX_DECODE = 1 << 16
# Where injected calls return: in page 0, below vm.mmap_min_addr, so never
# mapped; distinct from 0 so a NULL function pointer is not taken for a return.
RETURN_TRAP = 0xEC0
_FAULT_SIGNALS = frozenset(
    {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP, signal.SIGSYS}
)
_SI_USER = 0
_SI_TKILL = -6

# Calls the function in rdx on each of rsi words at rdi, storing each result
# over its argument (System V ABI; rbx, r12, r13 are callee-saved, and three
# pushes keep rsp 16-byte aligned at each call).
MAP_STUB = bytes.fromhex(
    "53"  # push rbx
    "4154"  # push r12
    "4155"  # push r13
    "4889fb"  # mov rbx, rdi
    "4989f4"  # mov r12, rsi
    "4989d5"  # mov r13, rdx
    "4d85e4"  # loop: test r12, r12
    "7412"  # je done
    "488b3b"  # mov rdi, [rbx]
    "41ffd5"  # call r13
    "488903"  # mov [rbx], rax
    "4883c308"  # add rbx, 8
    "49ffcc"  # dec r12
    "ebe9"  # jmp loop
    "415d"  # done: pop r13
    "415c"  # pop r12
    "5b"  # pop rbx
    "c3"  # ret
)


class InjectionError(EkidenError):
    """A system call or function injected into the target failed; the target was restored."""

    exit_code = 6


# -- small helpers -------------------------------------------------------------


def _signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


def _errno_text(err: int) -> str:
    return f"{errno.errorcode.get(err, f'errno {err}')} ({os.strerror(err)})"


def _signed(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


def _syscall_failed(result: int) -> bool:
    return -_MAX_ERRNO <= result < 0


def _check(tracee: Tracee, result: int, what: str) -> int:
    if _syscall_failed(result):
        raise InjectionError(f"{what} in process {tracee.pid} failed with {_errno_text(-result)}.")
    return result


def _round_up(size: int) -> int:
    return (size + _PAGE - 1) // _PAGE * _PAGE


def _where(pid: int, addr: int) -> str:
    for mapping in procfs.maps(pid):
        if mapping.start <= addr < mapping.end:
            return f" (in {os.path.basename(mapping.path) or 'anonymous memory'})"
    return " (unmapped)"


# -- saving, waiting and coming back to rest ------------------------------------


class _Saved:
    """The state an injection must put back, and the signals it held back."""

    def __init__(self, tracee: Tracee, what: str, *, vector_state: bool) -> None:
        if not tracee.alive or not tracee.stopped:
            raise InjectionError(
                f"process {tracee.pid} must be in a ptrace-stop before {what} can be injected."
            )
        self.what = what
        self.regs = tracee.regs()
        if not self.regs.orig_rax >> 63 and self.regs.rax == _ENOSYS_RAX:
            raise InjectionError(
                f"process {tracee.pid} is stopped at a system-call entry; resume it to a signal "
                f"or interrupt stop before {what} can be injected."
            )
        self.signal = tracee.pending_signal
        self.siginfo = pt.getsiginfo(tracee.pid) if self.signal else None
        self.xstate = (
            pt.getregset(tracee.pid, pt.NT_X86_XSTATE, _XSTATE_MAX) if vector_state else None
        )
        self.held: list[int] = []
        self.replaced = False  # a successful exec: nothing of the old image to restore

    def working_regs(self) -> pt.user_regs_struct:
        """A copy of the saved registers, outside any system call."""
        regs = pt.user_regs_struct.from_buffer_copy(self.regs)
        regs.orig_rax = _WORD  # -1: the kernel must not restart an interrupted call over ours
        return regs


def _next_stop(tracee: Tracee, saved: _Saved, deadline: float) -> Stop:
    stop = tracee.wait_stop(max(deadline - time.monotonic(), 0.0))
    if stop.kind == "exited":
        raise TargetExited(
            f"process {tracee.pid} exited with status {stop.exit_code} during {saved.what}."
        )
    if stop.kind == "killed":
        raise TargetExited(
            f"process {tracee.pid} was killed by {_signal_name(stop.signo)} during {saved.what}."
        )
    return stop


def _is_fault(stop: Stop, pid: int) -> bool:
    """A signal the injected code itself caused: a CPU fault, or abort()."""
    info = stop.siginfo
    if info is None:
        return False
    if stop.signo in _FAULT_SIGNALS and info.si_code > 0:
        return True
    return (
        stop.signo == signal.SIGABRT
        and info.si_code in (_SI_USER, _SI_TKILL)
        and info._sigchld.pid == pid
    )


def _hold(saved: _Saved, stop: Stop, pid: int) -> None:
    """Remember a signal that arrived meanwhile, to send it again at the end."""
    if stop.kind == "signal" and not _is_fault(stop, pid):
        saved.held.append(stop.signo)


def _stop_running(tracee: Tracee, saved: _Saved) -> None:
    """Bring a tracee that runs injected code into an interrupt stop."""
    with contextlib.suppress(ProcessLookupError):
        pt.interrupt(tracee.pid)
    deadline = time.monotonic() + TIMEOUT
    while True:
        stop = _next_stop(tracee, saved, deadline)
        if stop.kind == "interrupt":
            break
        _hold(saved, stop, tracee.pid)
        tracee.cont(0)
    # A single-stepped system call that was interrupted still queued its
    # step's SIGTRAP, behind the interrupt stop; take it now, or the next
    # resume would report it.  No instruction runs: it is already pending.
    while signal.SIGTRAP in procfs.pending_unblocked(tracee.pid):
        tracee.cont(0)
        _hold(saved, _next_stop(tracee, saved, deadline), tracee.pid)


def _rest(tracee: Tracee, saved: _Saved) -> None:
    """From one of our stops, reach the stop the tracee rests in (see the module doc).

    PTRACE_CONT with no signal makes the kernel check for job-control traps and
    pending signals before returning to user space, so the tracee stops again
    without running an instruction; the resume also clears the trap flag.
    """
    signo = 0 if saved.replaced else saved.signal
    if signo:
        os.kill(tracee.pid, signo)
    else:
        pt.interrupt(tracee.pid)
    tracee.cont(0)
    deadline = time.monotonic() + TIMEOUT
    while True:
        stop = _next_stop(tracee, saved, deadline)
        if signo and stop.kind == "signal" and stop.signo == signo:
            assert saved.siginfo is not None
            pt.setsiginfo(tracee.pid, saved.siginfo)
            return
        if not signo and stop.kind == "interrupt":
            return
        _hold(saved, stop, tracee.pid)
        tracee.cont(0)


def _finish(tracee: Tracee, saved: _Saved) -> None:
    """Put back what the injection changed, come to rest, re-send held signals."""
    if not tracee.alive:
        return
    if not tracee.stopped:
        _stop_running(tracee, saved)
    if not saved.replaced:
        tracee.set_regs(saved.regs)
        if saved.xstate is not None:
            pt.setregset(tracee.pid, pt.NT_X86_XSTATE, saved.xstate)
    _rest(tracee, saved)
    for signo in saved.held:
        os.kill(tracee.pid, signo)


@contextlib.contextmanager
def _injecting(tracee: Tracee, saved: _Saved, timeout: float) -> Iterator[None]:
    """Run an injection; always finish it, turning a timeout into InjectionError."""
    try:
        yield
    except WaitTimeout:
        _finish(tracee, saved)
        raise InjectionError(
            f"{saved.what} in process {tracee.pid} did not complete within {timeout:g} s; "
            "it was interrupted and the registers restored."
        ) from None
    except BaseException:
        _finish(tracee, saved)
        raise
    _finish(tracee, saved)


# -- function calls ------------------------------------------------------------------


def _call(
    tracee: Tracee,
    saved: _Saved,
    function: int,
    args: Sequence[int],
    scratch: int | None,
    timeout: float,
) -> int:
    """One function call inside an injection (see Injector.call)."""
    top = saved.regs.rsp - _RED_ZONE if scratch is None else scratch
    frame = (top & ~15) - 8  # as just after a call: rsp + 8 is 16-byte aligned
    try:
        tracee.write_word(frame, RETURN_TRAP)
    except MemoryAccessError:
        raise InjectionError(
            f"cannot build a call frame at {frame:#x} in process {tracee.pid}: "
            "that stack memory is not mapped."
        ) from None
    regs = saved.working_regs()
    regs.rip = function
    regs.rsp = frame
    regs.rax = 0  # no vector registers used by a variadic callee
    regs.eflags &= ~_EFLAGS_DF
    for name, value in zip(("rdi", "rsi", "rdx", "rcx", "r8", "r9"), args, strict=False):
        setattr(regs, name, value & _WORD)
    tracee.set_regs(regs)
    return _run_call(tracee, saved, frame, timeout)


def _run_call(tracee: Tracee, saved: _Saved, frame: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        tracee.cont(0)
        stop = _next_stop(tracee, saved, deadline)
        if stop.kind in ("interrupt", "group"):
            continue
        if stop.kind != "signal":
            raise InjectionError(
                f"{saved.what} in process {tracee.pid} ended in an unexpected {stop.kind} stop."
            )
        regs = tracee.regs()
        if stop.signo == signal.SIGSEGV and regs.rip == RETURN_TRAP and regs.rsp == frame + 8:
            return int(regs.rax)
        if _is_fault(stop, tracee.pid):
            raise InjectionError(
                f"{saved.what} in process {tracee.pid} crashed with {_signal_name(stop.signo)} "
                f"at {regs.rip:#x}{_where(tracee.pid, regs.rip)}; the registers were restored."
            )
        _hold(saved, stop, tracee.pid)


# -- symbols and gadgets -----------------------------------------------------------------


def _lookup(
    pid: int, name: str, library: str | None
) -> tuple[images.MappedImage, images.FunctionSymbol]:
    try:
        mapped = images.mapped_images(pid)
    except OSError as exc:
        raise InjectionError(
            f"cannot read the mappings of process {pid}: {exc.strerror}."
        ) from None
    for image in mapped:
        if library is not None and not images.matches_library(image.path, library):
            continue
        function = image.image.functions.get(name)
        if function is not None:
            return image, function
    where = f"library {library}" if library else "its executable or any library it has loaded"
    raise InjectionError(f"process {pid} has no function {name} in {where}.")


def find_function(pid: int, name: str, library: str | None = None) -> int:
    """Runtime address of function `name` in the executable or a loaded library.

    The executable is searched first, then the libraries in address order
    (or only `library`, a path or basename).  A GNU indirect function (such
    as glibc's strlen) needs resolve_function.
    """
    mapped, function = _lookup(pid, name, library)
    if function.ifunc:
        raise InjectionError(
            f"{name} in {os.path.basename(mapped.path)} is a GNU indirect function; "
            f"use resolve_function to get the implementation process {pid} uses."
        )
    return mapped.bias + function.addr


def function_range(pid: int, name: str, library: str | None = None) -> tuple[int, int]:
    """Runtime [start, end) of function `name` (file-local functions included)."""
    mapped, function = _lookup(pid, name, library)
    start = mapped.bias + function.addr
    return start, start + function.size


def _sibling_function(pid: int, addr: int, name: str) -> int | None:
    """Function `name` of the image that contains `addr`, if any."""
    for mapped in images.mapped_images(pid):
        if any(m.start <= addr < m.end for m in mapped.mappings):
            function = mapped.image.functions.get(name)
            if function is not None and not function.ifunc:
                return mapped.bias + function.addr
    return None


def is_syscall_instruction(tracee: Tracee, addr: int, function_start: int | None = None) -> bool:
    """True when a `syscall` instruction starts at `addr` in executable memory.

    With `function_start` (an instruction boundary before `addr`, e.g. the
    function's symbol) the code is decoded from there, which proves `addr`
    is an instruction boundary; without it only the bytes at `addr` are checked.
    """
    start = addr if function_start is None else function_start
    if not 0 <= addr - start < _MAX_DECODE:
        return False
    if not any(m.start <= addr and addr + 2 <= m.end and "x" in m.perms for m in tracee.maps()):
        return False
    try:
        code = tracee.read(start, addr - start + 2)
    except OSError:
        return False
    if function_start is None:
        return images.decodes_as_syscall(code, addr)
    return images.syscall_in_code(code, start) == addr


def _gadget_preference(image: images.MappedImage) -> int:
    """libc first, then ld.so, then any other file."""
    base = os.path.basename(image.path)
    if base.startswith(("libc.so", "libc-")):
        return 0
    return 1 if base.startswith("ld-") else 2


def find_syscall_gadget(tracee: Tracee, ranges: Sequence[tuple[int, int]] = ()) -> int:
    """Address of a `syscall` instruction in the target's executable memory.

    `ranges` are runtime [start, end) ranges of functions to try first (the
    program's ekiden__stop); then libc, ld.so, the other mapped files, and
    the vDSO.  Each hit is confirmed with capstone.
    """
    read = tracee.read
    for start, end in ranges:
        hit = images.syscall_in_code(images.read_or_empty(read, start, end - start), start)
        if hit is not None and is_syscall_instruction(tracee, hit):
            return hit
    try:
        mapped = images.mapped_images(tracee.pid)
    except OSError as exc:
        raise InjectionError(
            f"cannot read the mappings of process {tracee.pid}: {exc.strerror}."
        ) from None
    for image in sorted(mapped, key=_gadget_preference):
        hit = images.image_gadget(read, image)
        if hit is None:
            hit = images.scan_gadget(read, list(image.mappings))
        if hit is not None:
            return hit
    vdso = [m for m in tracee.maps() if m.path == "[vdso]"]
    hit = images.scan_gadget(read, vdso)
    if hit is not None:
        return hit
    raise InjectionError(
        f"process {tracee.pid} has no syscall instruction that ekiden-trace could find "
        "(not in the given functions, libc, ld.so, its other files or the vDSO)."
    )


# -- file descriptors and exec -----------------------------------------------------------


def _has_cloexec(pid: int, fd: int) -> bool:
    """FD_CLOEXEC of `fd`, which procfs shows as O_CLOEXEC in the fdinfo flags."""
    try:
        flags = procfs.fd_flags(pid, fd)
    except FileNotFoundError:
        raise InjectionError(f"file descriptor {fd} is not open in process {pid}.") from None
    if flags is None:
        raise InjectionError(f"{procfs.fdinfo_path(pid, fd)} shows no flags line.")
    return bool(flags & os.O_CLOEXEC)


def _exec_block(
    base: int, path: bytes, argv: Sequence[bytes], envp: Sequence[bytes]
) -> tuple[bytes, int, int, int]:
    """What to place at `base` for execve: the argv and envp pointer arrays, then the strings.

    Returns (block, path address, argv address, envp address).
    """
    arrays = 8 * (len(argv) + 1 + len(envp) + 1)
    strings = bytearray(path + b"\0")
    pointers = array("Q")
    for group in (argv, envp):
        for item in group:
            pointers.append(base + arrays + len(strings))
            strings += item + b"\0"
        pointers.append(0)
    return pointers.tobytes() + bytes(strings), base + arrays, base, base + 8 * (len(argv) + 1)


_SIG_BLOCK, _SIG_SETMASK = 0, 2
_SIG_DFL, _SIG_IGN = 0, 1
_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


def _sigset(signals: set[int]) -> int:
    """A kernel sigset_t (64 bits) holding `signals`."""
    return sum(1 << (signo - 1) for signo in signals)


def _stack_room(tracee: Tracee, size: int) -> int | None:
    """Where `size` bytes fit below the stack pointer and its red zone, memory the program
    does not use, in what the stack has mapped already (so it does not grow); or None."""
    if size > _STACK_SCRATCH:
        return None
    base = (tracee.regs().rsp - _RED_ZONE - size) & ~15
    try:
        tracee.read(base, 1)  # the stack is one mapping: mapped here means mapped up to rsp
    except OSError:
        return None
    return base


# -- the injector ------------------------------------------------------------------------


class Injector:
    """Injection into one stopped tracee through a `syscall` instruction it has (the gadget).

    Make one with `for_tracee`, or from a known gadget.  Each method that runs code in the
    tracee is one injection (see the module doc).  An injector also keeps the addresses of
    the functions it looked up and, once asked for one, a scratch area of SCRATCH_SIZE
    bytes that `close` removes.
    All of these belong to the image the tracee runs: after a successful exec_in_place,
    make a new injector.
    """

    def __init__(self, tracee: Tracee, gadget: int) -> None:
        self.tracee = tracee
        self.gadget = gadget
        self._functions: dict[tuple[str, str | None], int] = {}
        self._scratch: int | None = None

    @classmethod
    def for_tracee(
        cls,
        tracee: Tracee,
        program: str | None = None,
        function: str = "",
        bias: int = 0,
        symbols: str | None = None,
    ) -> Injector:
        """An injector whose gadget is the first `syscall` of `function` in the program file
        `program`, loaded at `bias`, when the process has that code there.  The instruction
        is found in the file beforehand (file_gadget, cached), so here one read confirms it:
        fast enough for a pause.  Otherwise, or without a program, any other gadget is
        searched (find_syscall_gadget: slow the first time, it parses the mapped files).
        `symbols` names the file whose symbols hold `function` when the program is stripped."""
        if program is not None:
            found = images.file_gadget(program, function, symbols)
            if found is not None:
                start, code = found
                if images.read_or_empty(tracee.read, start + bias, len(code)) == code:
                    return cls(tracee, start + bias + len(code) - len(images.SYSCALL_BYTES))
        return cls(tracee, find_syscall_gadget(tracee))

    # -- system calls ------------------------------------------------------------

    def syscall(self, nr: int, *args: int, timeout: float = TIMEOUT) -> int:
        """Run system call `nr` in the stopped tracee.

        Returns the raw result, a negative errno on failure.  Meant for calls that
        do not block; one that blocks longer than `timeout` is interrupted.  A
        successful execve returns 0 with the tracee resting at the new entry point.
        """
        saved = _Saved(self.tracee, f"system call {nr}", vector_state=False)
        with _injecting(self.tracee, saved, timeout):
            _, after = self._step_syscall(saved, nr, args, timeout)
            saved.replaced = after is None  # a successful execve, which returns no value
            result = 0 if after is None else _signed(after.rax)
        return result

    def syscalls(
        self, calls: Sequence[tuple[int, Sequence[int]]], *, timeout: float = TIMEOUT
    ) -> list[int]:
        """Run several system calls, (nr, args) each, one after the other in one injection:
        the registers are saved once and the tracee comes to rest once.  Returns the raw
        results in order.  execve is refused: use syscall or exec_in_place."""
        if not calls:
            return []
        if any(nr in (NR_EXECVE, NR_EXECVEAT) for nr, _ in calls):
            raise ValueError("execve cannot run in a batch of system calls")
        numbers = ", ".join(str(nr) for nr, _ in calls)
        saved = _Saved(self.tracee, f"system calls {numbers}", vector_state=False)
        with _injecting(self.tracee, saved, timeout):
            results = [self._run_syscall(saved, nr, args, timeout) for nr, args in calls]
        return results

    def mmap(self, size: int, prot: int, flags: int = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) -> int:
        """Map `size` bytes of anonymous memory in the tracee; return the address."""
        result = self.syscall(NR_MMAP, 0, size, prot, flags, -1, 0)
        return _check(self.tracee, result, f"mmap of {size} bytes")

    def munmap(self, addr: int, size: int) -> None:
        """Unmap [addr, addr+size) in the tracee."""
        result = self.syscall(NR_MUNMAP, addr, size)
        _check(self.tracee, result, f"munmap of {size} bytes at {addr:#x}")

    def fcntl(self, fd: int, cmd: int, arg: int = 0) -> int:
        """fcntl(fd, cmd, arg) in the tracee; raises InjectionError on failure."""
        result = self.syscall(NR_FCNTL, fd, cmd, arg)
        return _check(self.tracee, result, f"fcntl({fd}, {cmd}, {arg})")

    def _step_syscall(
        self, saved: _Saved, nr: int, args: Sequence[int], timeout: float
    ) -> tuple[Stop, pt.user_regs_struct | None]:
        """Run one system call at the gadget.

        Returns the stop after it (SIGTRAP, or 'exec') and, unless it was an exec,
        the registers there.
        """
        if len(args) > 6:
            raise ValueError("a system call takes at most 6 arguments")
        tracee, gadget = self.tracee, self.gadget
        regs = saved.working_regs()
        regs.rip = gadget
        regs.rax = nr
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args, strict=False):
            setattr(regs, name, value & _WORD)
        tracee.set_regs(regs)
        deadline = time.monotonic() + timeout
        while True:
            pt.singlestep(tracee.pid)
            tracee.stopped = False
            tracee.pending_signal = 0
            stop = _next_stop(tracee, saved, deadline)
            if stop.kind == "exec":
                return stop, None
            after = tracee.regs()
            rip = after.rip
            if stop.kind == "signal" and stop.signo == signal.SIGTRAP and rip == gadget + 2:
                return stop, after
            if rip != gadget:
                raise InjectionError(
                    f"{saved.what} in process {tracee.pid} stopped at {rip:#x} "
                    f"({stop.kind} stop, {_signal_name(stop.signo)}) instead of after the "
                    f"syscall instruction at {gadget:#x}."
                )
            if stop.kind == "signal" and _is_fault(stop, tracee.pid):
                raise InjectionError(
                    f"the syscall instruction at {gadget:#x} in process {tracee.pid} cannot "
                    f"run ({_signal_name(stop.signo)}); it is not a usable gadget."
                )
            # Stopped before the instruction ran: a signal that was pending, or an interrupt.
            _hold(saved, stop, tracee.pid)

    def _run_syscall(
        self, saved: _Saved, nr: int, args: Sequence[int], timeout: float = TIMEOUT
    ) -> int:
        """One system call (not execve) inside an injection; its raw result."""
        _, after = self._step_syscall(saved, nr, args, timeout)
        assert after is not None  # only a successful execve leaves no registers to read
        return _signed(after.rax)

    # -- function calls ----------------------------------------------------------

    def call(
        self, function: int, *args: int, scratch: int | None = None, timeout: float = TIMEOUT
    ) -> int:
        """Call `function(*args)` (System V ABI, at most 6 integer arguments) in the tracee.

        Runs on the thread's stack below its red zone, or on a stack whose top is
        `scratch`.  Returns rax as an unsigned 64-bit number (sign-extend it for
        signed results).  A crash of the function or a timeout raises
        InjectionError after the registers are restored.
        """
        if len(args) > 6:
            raise ValueError("remote_call passes at most 6 arguments (in registers)")
        saved = _Saved(self.tracee, f"the call of the function at {function:#x}", vector_state=True)
        with _injecting(self.tracee, saved, timeout):
            result = _call(self.tracee, saved, function, args, scratch, timeout)
        return result

    def batch_call(
        self, function: int, values: Sequence[int], *, timeout: float = BATCH_TIMEOUT
    ) -> list[int]:
        """Call `function(v)` for every value in one round trip; return the results in order.

        A tiny loop (MAP_STUB) is written into a fresh mapping of the target and
        run there; the mapping is removed afterwards.  Mapping, call and unmapping
        are one injection, so the tracee comes to rest once.
        """
        if not values:
            return []
        tracee = self.tracee
        size = _PAGE + _round_up(8 * len(values))
        saved = _Saved(
            tracee, f"the batch call of the function at {function:#x}", vector_state=True
        )
        with _injecting(tracee, saved, timeout):
            prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
            mapped = self._run_syscall(saved, NR_MMAP, (0, size, prot, flags, -1, 0))
            area = _check(tracee, mapped, f"mmap of {size} bytes")
            try:
                results = self._call_each(saved, area, function, values, timeout)
            except BaseException:
                self._unmap_after_failure(saved, area, size)
                raise
            unmapped = self._run_syscall(saved, NR_MUNMAP, (area, size))
            _check(tracee, unmapped, f"munmap of {size} bytes at {area:#x}")
        return results

    def _call_each(
        self, saved: _Saved, area: int, function: int, values: Sequence[int], timeout: float
    ) -> list[int]:
        """Inside an injection: run MAP_STUB from `area`, a fresh read-write mapping large
        enough for the stub's page and the values after it."""
        tracee = self.tracee
        data = area + _PAGE
        tracee.write(area, MAP_STUB)
        code = mmap.PROT_READ | mmap.PROT_EXEC
        protected = self._run_syscall(saved, NR_MPROTECT, (area, _PAGE, code))
        _check(tracee, protected, "mprotect of the call loop")
        # An array('Q') (a million sizes) goes as it is, and its results come back as one.
        packed = values if isinstance(values, array) and values.typecode == "Q" else None
        if packed is None:
            packed = array("Q", [v & _WORD for v in values])
        tracee.write(data, packed.tobytes())
        _call(tracee, saved, area, (data, len(values), function), None, timeout)
        results = array("Q")
        results.frombytes(tracee.read(data, 8 * len(values)))
        return results if packed is values else results.tolist()

    def _unmap_after_failure(self, saved: _Saved, area: int, size: int) -> None:
        """Inside a failed injection: remove its mapping if the tracee can still be stopped."""
        if not self.tracee.alive:
            return
        with contextlib.suppress(EkidenError, OSError):
            if not self.tracee.stopped:
                _stop_running(self.tracee, saved)
            self._run_syscall(saved, NR_MUNMAP, (area, size))

    def batch_malloc(
        self, malloc_addr: int, sizes: Sequence[int], *, timeout: float = BATCH_TIMEOUT
    ) -> list[int]:
        """Allocate one object per size with the target's own malloc, in one round trip.

        A NULL result raises InjectionError after freeing the objects that were
        allocated (with the `free` of the library that provides `malloc_addr`).
        """
        pointers = self.batch_call(malloc_addr, sizes, timeout=timeout)
        failed = pointers.count(0)
        if failed:
            allocated = [p for p in pointers if p]
            free_addr = _sibling_function(self.tracee.pid, malloc_addr, "free")
            if allocated and free_addr is not None:
                self.batch_call(free_addr, allocated, timeout=timeout)
            first = sizes[pointers.index(0)]
            raise InjectionError(
                f"the target is out of memory: malloc returned NULL for {failed} of "
                f"{len(sizes)} objects (the first of {first} bytes)."
            )
        return pointers

    def function(self, name: str, library: str | None = None) -> int:
        """find_function, remembered: the runtime address of function `name`."""
        key = (name, library)
        if key not in self._functions:
            self._functions[key] = find_function(self.tracee.pid, name, library)
        return self._functions[key]

    def resolve_function(
        self, name: str, library: str | None = None, *, timeout: float = TIMEOUT
    ) -> int:
        """Like find_function, but a GNU indirect function is resolved by calling its
        resolver."""
        mapped, function = _lookup(self.tracee.pid, name, library)
        addr = mapped.bias + function.addr
        return self.call(addr, timeout=timeout) if function.ifunc else addr

    # -- the scratch area ----------------------------------------------------------

    def scratch_area(self) -> int:
        """The address of a read-write area of SCRATCH_SIZE bytes in the tracee, mapped on
        first use."""
        if self._scratch is None:
            self._scratch = self.mmap(SCRATCH_SIZE, mmap.PROT_READ | mmap.PROT_WRITE)
        return self._scratch

    def close(self) -> None:
        """Give the scratch area back to the tracee, if one was mapped."""
        if self._scratch is not None:
            self.munmap(self._scratch, SCRATCH_SIZE)
            self._scratch = None

    # -- file descriptors ----------------------------------------------------------

    def clear_cloexec(self, fds: Sequence[int]) -> list[int]:
        """Clear FD_CLOEXEC on those of `fds` that have it, so they survive an exec.

        Returns the fds it cleared, for restore_cloexec after the exec.  On
        failure the flag is set again on all of them.
        """
        flagged = [fd for fd in fds if _has_cloexec(self.tracee.pid, fd)]
        try:
            # FD_CLOEXEC is the only descriptor flag, so 0 clears just it.
            self._set_fd_flags(flagged, 0)
        except BaseException:
            if self.tracee.alive and self.tracee.stopped:
                with contextlib.suppress(EkidenError, OSError):
                    self.restore_cloexec(flagged)
            raise
        return flagged

    def restore_cloexec(self, fds: Sequence[int], close: Sequence[int] = ()) -> None:
        """Set FD_CLOEXEC again on `fds` (the list clear_cloexec returned) and close the fds
        of `close`, in one injection."""
        self._set_fd_flags(fds, fcntl.FD_CLOEXEC, close)

    def _set_fd_flags(self, fds: Sequence[int], flags: int, close: Sequence[int] = ()) -> None:
        """fcntl(fd, F_SETFD, flags) for every fd, then close(fd) for those of `close`, in
        one injection."""
        calls = [(NR_FCNTL, (fd, fcntl.F_SETFD, flags)) for fd in fds]
        calls += [(NR_CLOSE, (fd,)) for fd in close]
        labels = [f"fcntl({fd}, {fcntl.F_SETFD}, {flags})" for fd in fds]
        labels += [f"close({fd})" for fd in close]
        for label, result in zip(labels, self.syscalls(calls), strict=True):
            _check(self.tracee, result, label)

    def open_path(self, path: bytes, flags: int) -> int:
        """openat(AT_FDCWD, path, flags) in the tracee, the path written below its stack
        pointer; the new fd, or InjectionError naming the errno."""
        base = _stack_room(self.tracee, len(path) + 1)
        if base is None:
            raise InjectionError(f"process {self.tracee.pid} has no stack room for a path.")
        self.tracee.write(base, path + b"\0")
        result = self.syscall(NR_OPENAT, AT_FDCWD, base, flags)
        return _check(self.tracee, result, f"open of {os.fsdecode(path)}")

    # -- signals -------------------------------------------------------------------

    def reset_signals(self, blocked: set[int], ignored: set[int], drop: set[int]) -> None:
        """Give the tracee this signal state, in one injection: `blocked` as its mask, the
        signals of `ignored` ignored and any other it ignores back to its default action,
        and none of `drop` pending.  Meant for a process about to exec (which resets
        handlers anyway), e.g. back to the state of a version it ran before."""
        _, now_ignored, _ = self.tracee.signal_masks()
        to_default = sorted(now_ignored - ignored - _UNCATCHABLE)
        to_ignore = sorted(ignored - now_ignored - _UNCATCHABLE)
        # sigset to drop, zero timespec, the new mask, sigaction SIG_DFL, sigaction SIG_IGN
        block = struct.pack(
            "<QQQQ4Q4Q", _sigset(drop), 0, 0, _sigset(blocked), _SIG_DFL, 0, 0, 0, _SIG_IGN, 0, 0, 0
        )
        area = _stack_room(self.tracee, len(block)) or self.scratch_area()
        self.tracee.write(area, block)
        drop_set, no_wait, mask, default, ignore = area, area + 8, area + 24, area + 32, area + 64
        calls: list[tuple[int, Sequence[int]]] = [
            (NR_RT_SIGPROCMASK, (_SIG_BLOCK, drop_set, 0, 8))  # blocked: waited for, not run
        ]
        calls += [(NR_RT_SIGTIMEDWAIT, (drop_set, 0, no_wait, 8))] * len(drop)
        calls += [(NR_RT_SIGACTION, (signo, default, 0, 8)) for signo in to_default]
        calls += [(NR_RT_SIGACTION, (signo, ignore, 0, 8)) for signo in to_ignore]
        calls.append((NR_RT_SIGPROCMASK, (_SIG_SETMASK, mask, 0, 8)))
        results = self.syscalls(calls)
        for (nr, args), result in zip(calls, results, strict=True):
            if nr != NR_RT_SIGTIMEDWAIT:  # EAGAIN there: nothing (more) was pending
                _check(self.tracee, result, f"system call {nr}{tuple(args)}")

    # -- exec in place -------------------------------------------------------------

    def exec_in_place(
        self,
        path: str | bytes,
        argv: Sequence[bytes],
        envp: Sequence[bytes],
        *,
        fd: int | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        """Make the tracee execve(path, argv, envp): same PID, same fds without FD_CLOEXEC.
        With `fd` (an fd of the tracee), it execs that very file instead of a path:
        execveat(fd, "", argv, envp, AT_EMPTY_PATH).

        On success the tracee rests in an interrupt stop at the new program's
        entry point, before its first instruction; the signal of the stop it was
        in, if any, belonged to the old program and is dropped.  On failure
        (ENOENT, EACCES, ENOEXEC...) the old program is left exactly as it was
        and InjectionError names the errno: the execve is single-stepped, so a
        failed one stops right after the `syscall` instead of running on into the
        old program's code with our registers.  execve's strings and arrays go below
        the stack pointer (memory the program does not use) or, when large, into a
        mapping that a failure removes again.
        """
        raw_path = os.fsencode(path)
        if any(b"\0" in item for item in (raw_path, *argv, *envp)):
            raise InjectionError(
                "a path, argument or environment string for execve contains a NUL byte."
            )
        tracee = self.tracee
        size = len(_exec_block(0, raw_path, argv, envp)[0])
        base = _stack_room(tracee, size)
        scratch = None
        if base is None:
            base = scratch = self.mmap(_round_up(size), mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            block, path_addr, argv_addr, envp_addr = _exec_block(base, raw_path, argv, envp)
            tracee.write(base, block)
            if fd is None:
                call = (NR_EXECVE, path_addr, argv_addr, envp_addr)
            else:
                call = (NR_EXECVEAT, fd, path_addr, argv_addr, envp_addr, AT_EMPTY_PATH)
            result = self.syscall(*call, timeout=timeout)
        except BaseException:
            if scratch is not None and tracee.alive and tracee.stopped:
                with contextlib.suppress(EkidenError, OSError):
                    self.munmap(scratch, _round_up(size))
            raise
        if result:
            if scratch is not None:
                self.munmap(scratch, _round_up(size))
            what = os.fsdecode(raw_path) if fd is None else f"the file of fd {fd}"
            raise InjectionError(
                f"execve of {what} in process {tracee.pid} failed with "
                f"{_errno_text(-result)}; the old program runs on unchanged."
            )
