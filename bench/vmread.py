"""The machine's process_vm_readv bandwidth: read a large buffer held by a child process."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import time

from procs import kill, spawn

# The child: a buffer of argv[1] bytes, filled (so its pages exist), its address on stdout.
HOLDER = """
import ctypes, sys
n = int(sys.argv[1])
buf = bytearray(b"\\x5a") * n
print(ctypes.addressof((ctypes.c_char * n).from_buffer(buf)), flush=True)
sys.stdin.read()
"""


class _Iovec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = (
    ctypes.c_int,
    ctypes.POINTER(_Iovec),
    ctypes.c_ulong,
    ctypes.POINTER(_Iovec),
    ctypes.c_ulong,
    ctypes.c_ulong,
)


class VmReader:
    """A child holding `size` bytes, and timed reads of all of them; a context manager."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.proc = spawn(
            [sys.executable, "-c", HOLDER, str(size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        address = int(self.proc.stdout.readline())
        self.local = ctypes.create_string_buffer(size)
        self.local_iov = _Iovec(ctypes.addressof(self.local), size)
        self.remote_iov = _Iovec(address, size)
        self.read_once()  # fault in both sides' pages before any timing

    def read_once(self) -> float:
        """Seconds to read the whole buffer with one process_vm_readv call."""
        started = time.perf_counter()
        got = _libc.process_vm_readv(
            self.proc.pid, ctypes.byref(self.local_iov), 1, ctypes.byref(self.remote_iov), 1, 0
        )
        elapsed = time.perf_counter() - started
        if got != self.size:
            raise OSError(ctypes.get_errno(), f"process_vm_readv read {got} of {self.size} bytes")
        return elapsed

    def bandwidth(self) -> float:
        """Bytes per second of one read (the best of three back-to-back reads)."""
        return self.size / min(self.read_once() for _ in range(3))

    def __enter__(self) -> VmReader:
        return self

    def __exit__(self, *exc: object) -> None:
        kill(self.proc)
