"""Everything read from /proc: one small function per file, each parsing it one way.

Functions take a pid and raise what the file system raises (FileNotFoundError
once the process is gone, PermissionError for another user's process) unless
their docstring says otherwise.  The `*_path` functions give /proc paths to
open, stat or exec the very file a process uses.
"""

from __future__ import annotations

import itertools
import os
from array import array
from dataclasses import dataclass

_AT_NULL = 0


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    path: str


# -- paths ----------------------------------------------------------------------


def exe_path(pid: int) -> str:
    """/proc/PID/exe: opens (or execs) the very file `pid` runs, even when deleted."""
    return f"/proc/{pid}/exe"


def map_file_path(pid: int, start: int, end: int) -> str:
    """/proc/PID/map_files/START-END: opens the very file mapped at [start, end)."""
    return f"/proc/{pid}/map_files/{start:x}-{end:x}"


def root_path(pid: int, path: str) -> str:
    """The absolute `path` as process `pid` sees it, from its root directory."""
    return f"/proc/{pid}/root{path}"


def fd_path(pid: int, fd: int) -> str:
    """/proc/PID/fd/FD: opens (or stats) the very file `fd` of `pid` is open on."""
    return f"/proc/{pid}/fd/{fd}"


def fdinfo_path(pid: int, fd: int) -> str:
    """/proc/PID/fdinfo/FD."""
    return f"/proc/{pid}/fdinfo/{fd}"


def open_mem(pid: int) -> int:
    """A read-write file descriptor on the memory of `pid` (/proc/PID/mem, close-on-exec)."""
    return os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)


def read_memory(pid: int, addr: int, size: int) -> bytes:
    """`size` bytes at `addr` in `pid`, which need not be traced or stopped (/proc/PID/mem;
    needs the right to trace it).  Shorter when the range runs into unmapped memory."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, size, addr)
    finally:
        os.close(fd)


# -- the process ------------------------------------------------------------------


def exe_link(pid: int) -> str:
    """The path of the executable `pid` runs (the target of /proc/PID/exe)."""
    return os.readlink(exe_path(pid))


def status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict of field name -> value (stripped)."""
    with open(f"/proc/{pid}/status") as f:
        return {key: value.strip() for key, _, value in (line.partition(":") for line in f)}


def uid_gid(pid: int) -> tuple[int, int]:
    """The effective user and group ids of `pid`."""
    fields = status(pid)
    return int(fields["Uid"].split()[1]), int(fields["Gid"].split()[1])


def _signal_set(mask: str) -> set[int]:
    """The signal numbers in a hexadecimal mask of /proc/PID/status."""
    bits = int(mask, 16)
    return {bit + 1 for bit in range(64) if bits >> bit & 1}


def signal_masks(pid: int) -> tuple[set[int], set[int], set[int]]:
    """The (blocked, ignored, caught) signal numbers of `pid`."""
    fields = status(pid)
    blocked, ignored, caught = (_signal_set(fields[key]) for key in ("SigBlk", "SigIgn", "SigCgt"))
    return blocked, ignored, caught


def pending_unblocked(pid: int) -> set[int]:
    """The signals pending for the thread `pid` (not its process) and not blocked."""
    fields = status(pid)
    return _signal_set(fields["SigPnd"]) - _signal_set(fields["SigBlk"])


def comm(pid: int) -> str:
    """The command name of `pid`, or "unknown" when it cannot be read."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def tasks(pid: int) -> list[int]:
    """The thread ids of process `pid`."""
    return [int(task) for task in os.listdir(f"/proc/{pid}/task")]


def thread_count(pid: int) -> int:
    """How many threads process `pid` has."""
    return len(tasks(pid))


def is_own_thread(tid: int) -> bool:
    """True when `tid` is a thread of this very process."""
    return os.path.exists(f"/proc/self/task/{tid}")


def cmdline(pid: int) -> list[bytes]:
    """The arguments of `pid` (argv[0] included) as exact bytes, empty ones kept."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return _nul_separated(f.read())


def environ(pid: int) -> list[bytes]:
    """The environment `pid` was started with, as NAME=value byte strings."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        return _nul_separated(f.read())


def _nul_separated(data: bytes) -> list[bytes]:
    if not data:
        return []
    parts = data.split(b"\0")
    return parts[:-1] if data.endswith(b"\0") else parts


def maps(pid: int) -> list[Mapping]:
    """The memory mappings of any process (traced or not)."""
    result = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            start, _, end = fields[0].partition("-")
            path = fields[5].rstrip("\n") if len(fields) > 5 else ""
            offset = int(fields[2], 16)
            result.append(Mapping(int(start, 16), int(end, 16), fields[1], offset, path))
    return result


def auxv(pid: int) -> dict[int, int]:
    """The auxiliary vector the kernel gave `pid` at its last exec (AT_* type -> value)."""
    with open(f"/proc/{pid}/auxv", "rb") as f:
        words = array("Q", f.read())
    pairs = zip(words[::2], words[1::2], strict=False)
    return dict(itertools.takewhile(lambda pair: pair[0] != _AT_NULL, pairs))


# -- file descriptors ---------------------------------------------------------------


def open_fds(pid: int) -> list[int]:
    """The open file descriptors of `pid`, in increasing order."""
    return sorted(int(name) for name in os.listdir(f"/proc/{pid}/fd"))


def fd_flags(pid: int, fd: int) -> int | None:
    """The flags of `fd` in `pid` (O_* bits; FD_CLOEXEC shows as O_CLOEXEC), or None when
    its fdinfo has no flags line.  FileNotFoundError when `fd` is not open."""
    with open(fdinfo_path(pid, fd)) as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    return None


# -- all processes, the system --------------------------------------------------------


def children_by_parent() -> dict[int, list[int]]:
    """The children of every process, by parent pid (processes that end meanwhile are left
    out)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def ptrace_scope() -> str | None:
    """The value of kernel.yama.ptrace_scope, or None when Yama is not active."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return f.read().strip()
    except OSError:
        return None
