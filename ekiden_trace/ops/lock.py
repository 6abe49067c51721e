"""One command at a time per process: a lock per target pid, held from the first read of
the process until the command is done.

The lock is an flock on `<cache>/locks/PID.lock`, so the kernel releases it when its
holder dies, however it dies; the file holds the holder's pid, for the message of the
command that finds it taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
from collections.abc import Callable, Iterator
from typing import Concatenate, ParamSpec, TypeVar

from ekiden_trace.binary.dwarf.cache import CacheError, cache_dir
from ekiden_trace.errors import TargetError
from ekiden_trace.target import procfs

P = ParamSpec("P")
R = TypeVar("R")


class Busy(TargetError):
    """Another ekiden-trace command is working on the process."""


@contextlib.contextmanager
def process_lock(pid: int) -> Iterator[None]:
    """Hold the lock of process `pid`; Busy, naming the holder, when another command has it."""
    try:
        directory = cache_dir() / "locks"
        directory.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(directory / f"{pid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except (OSError, CacheError):
        # No usable cache directory: go on unlocked.  Seizing is exclusive anyway, and the
        # file a process runs is checked again once it is seized.
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(pid, os.pread(fd, 32, 0)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _busy(pid: int, holder: bytes) -> Busy:
    text = holder.decode(errors="replace").strip()
    who = f"pid {text}, {procfs.comm(int(text))}" if text.isdigit() else "its pid unknown"
    return Busy(
        f"another ekiden-trace command ({who}) is working on process {pid}; "
        "wait until it is done, then run this one again."
    )


def locked(fn: Callable[Concatenate[int, P], R]) -> Callable[Concatenate[int, P], R]:
    """Run fn(pid, ...) holding the lock of process `pid`."""

    @functools.wraps(fn)
    def run(pid: int, *args: P.args, **kwargs: P.kwargs) -> R:
        with process_lock(pid):
            return fn(pid, *args, **kwargs)

    return run
