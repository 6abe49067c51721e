"""Raw ptrace(2) requests and constants for x86-64 Linux.

Only python-ptrace's raw binding and its register/siginfo structs are used.
Each wrapper is one request; failures raise OSError carrying the errno (so
ESRCH arrives as ProcessLookupError, EPERM as PermissionError).
"""

from __future__ import annotations

import ctypes
import os

from ptrace.binding import func as _binding
from ptrace.binding.linux_struct import iovec_struct, siginfo, user_regs_struct
from ptrace.error import PtraceError

__all__ = ["siginfo", "user_regs_struct"]

PTRACE_PEEKUSER = 3
PTRACE_CONT = 7
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_GETSIGINFO = 0x4202
PTRACE_SETSIGINFO = 0x4203
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208

PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEEXEC = 0x10
# Kills the tracee when the tracer dies. Never pass it: a dying tool must not kill the target.
PTRACE_O_EXITKILL = 0x100000

PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_STOP = 128

# Register set of PTRACE_GETREGSET: the whole XSAVE area (x87, SSE, AVX, AVX-512...).
NT_X86_XSTATE = 0x202

# waitpid flag: wait for all children, clone or not (__WALL).
WALL = 0x40000000

_NAMES = {
    value: name
    for name, value in globals().items()
    if name.startswith("PTRACE_") and not name.startswith(("PTRACE_O_", "PTRACE_EVENT_"))
}


def _request(request: int, pid: int, addr: int = 0, data: int = 0, *, peek: bool = False) -> int:
    """Issue one request; a peek may legitimately return -1, so errno decides."""
    if peek:
        ctypes.set_errno(0)
    try:
        return _binding.ptrace(request, pid, addr, data, peek)
    except PtraceError as exc:
        err = exc.errno or 0
        name = _NAMES.get(request, hex(request))
        raise OSError(err, f"ptrace({name}) on pid {pid}: {os.strerror(err)}") from None


def seize(pid: int, options: int) -> None:
    """Attach to `pid` without stopping it (PTRACE_SEIZE)."""
    if options & PTRACE_O_EXITKILL:
        raise ValueError("PTRACE_O_EXITKILL would let a dying tool kill the target")
    _request(PTRACE_SEIZE, pid, 0, options)


def interrupt(pid: int) -> None:
    """Ask a seized tracee to enter a ptrace-stop (reported by waitpid)."""
    _request(PTRACE_INTERRUPT, pid)


def listen(pid: int) -> None:
    """Let a tracee in group-stop stay stopped but report SIGCONT and events."""
    _request(PTRACE_LISTEN, pid)


def cont(pid: int, signo: int = 0) -> None:
    """Resume a stopped tracee, delivering `signo` if not 0."""
    _request(PTRACE_CONT, pid, 0, signo)


def singlestep(pid: int, signo: int = 0) -> None:
    """Resume for one instruction; the tracee then stops with SIGTRAP."""
    _request(PTRACE_SINGLESTEP, pid, 0, signo)


def syscall(pid: int, signo: int = 0) -> None:
    """Resume until the next system call entry or exit."""
    _request(PTRACE_SYSCALL, pid, 0, signo)


def detach(pid: int, signo: int = 0) -> None:
    """Detach from a stopped tracee, delivering `signo` if not 0."""
    _request(PTRACE_DETACH, pid, 0, signo)


def getregs(pid: int) -> user_regs_struct:
    """The general-purpose registers of a stopped tracee."""
    regs = user_regs_struct()
    _request(PTRACE_GETREGS, pid, 0, ctypes.addressof(regs))
    return regs


def setregs(pid: int, regs: user_regs_struct) -> None:
    """Set the general-purpose registers of a stopped tracee."""
    _request(PTRACE_SETREGS, pid, 0, ctypes.addressof(regs))


def peekuser(pid: int, offset: int) -> int:
    """Read one word at `offset` in the tracee's `struct user`."""
    return _request(PTRACE_PEEKUSER, pid, offset, peek=True)


def getsiginfo(pid: int) -> siginfo:
    """The siginfo of the signal that caused the current signal-delivery-stop."""
    info = siginfo()
    _request(PTRACE_GETSIGINFO, pid, 0, ctypes.addressof(info))
    return info


def setsiginfo(pid: int, info: siginfo) -> None:
    """Replace the siginfo of the current signal-delivery-stop."""
    _request(PTRACE_SETSIGINFO, pid, 0, ctypes.addressof(info))


def getregset(pid: int, note_type: int, size: int) -> bytes:
    """Read a register set (e.g. NT_X86_XSTATE) into a buffer of at most `size` bytes."""
    buf = ctypes.create_string_buffer(size)
    iov = iovec_struct(ctypes.addressof(buf), size)
    _request(PTRACE_GETREGSET, pid, note_type, ctypes.addressof(iov))
    return buf.raw[: iov.len]


def setregset(pid: int, note_type: int, data: bytes) -> None:
    """Write a register set read by getregset."""
    buf = ctypes.create_string_buffer(data, len(data))
    iov = iovec_struct(ctypes.addressof(buf), len(data))
    _request(PTRACE_SETREGSET, pid, note_type, ctypes.addressof(iov))
