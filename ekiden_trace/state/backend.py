"""The new process as encoding and transformers see it: calls, malloc, symbols, writes."""

from __future__ import annotations

import mmap
import os
from typing import Any

from ekiden_trace.binary.program import Program
from ekiden_trace.errors import EkidenError
from ekiden_trace.state.encode import ConversionError, Encoder
from ekiden_trace.target.images import load_image
from ekiden_trace.target.inject import (
    batch_malloc,
    find_function,
    remote_call,
    remote_mmap,
    remote_munmap,
)
from ekiden_trace.target.tracee import Tracee, read_auxv

SCRATCH_SIZE = 1 << 20
WRITE_BATCH = 4096  # queued writes land in batches of this many (4 system calls)
AT_ENTRY = 9  # the auxiliary vector's entry point of the program


class RestoreFailed(EkidenError):
    """The new version could not be brought up with its state (the caller rolls back)."""

    exit_code = 9


def load_bias(pid: int, program: Program) -> int:
    """Load bias of the program a process runs: where the kernel placed its entry point
    (AT_ENTRY) minus the entry point its file names."""
    try:
        same = os.path.samefile(f"/proc/{pid}/exe", program.path)
    except OSError:
        same = False
    image = load_image(str(program.path)) if same else None
    if image is None:
        raise RestoreFailed(f"process {pid} does not run {program.path} after the exec.")
    return read_auxv(pid)[AT_ENTRY] - image.entry


def _c_string(text: str | bytes) -> bytes:
    return (text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text) + b"\0"


class ProcessBackend:
    """The new process, as encoding and transformers see it: calls, malloc, symbols, writes."""

    def __init__(self, tracee: Tracee, program: Program, bias: int, gadget: int) -> None:
        self.tracee = tracee
        self.program = program
        self.bias = bias
        self.gadget = gadget
        self._functions: dict[str, int] = {}
        self.encoder: Encoder | None = None  # set once the restore has one
        self._scratch: int | None = None
        self._queued: list[tuple[int, bytes]] = []

    def function(self, name: str) -> int:
        """Runtime address of a function of the program or of a library it loaded."""
        if name not in self._functions:
            base, _, library = name.partition("@")
            sym = self.program.symbols.by_name.get(base) if not library else None
            if sym is not None:
                self._functions[name] = sym.addr + self.bias
            else:
                self._functions[name] = find_function(self.tracee.pid, base)
        return self._functions[name]

    def call(self, function: str, *args: int | str | bytes) -> int:
        """Call a function in the new process; str/bytes arguments are passed as C strings
        placed in a scratch area, so nothing is left allocated after the call."""
        self.flush()  # the function may read what was written
        values, used = [], 0
        for arg in args:
            if not isinstance(arg, str | bytes):
                values.append(int(arg))
                continue
            data = _c_string(arg)
            if used + len(data) > SCRATCH_SIZE:
                raise RestoreFailed(f"the arguments of {function} exceed {SCRATCH_SIZE} bytes.")
            if self._scratch is None:
                prot = mmap.PROT_READ | mmap.PROT_WRITE
                self._scratch = remote_mmap(self.tracee, self.gadget, SCRATCH_SIZE, prot)
            self.tracee.write(self._scratch + used, data)
            values.append(self._scratch + used)
            used += len(data)
        return remote_call(self.tracee, self.function(function), *values)

    def close(self) -> None:
        """Give the scratch area back to the new process."""
        if self._scratch is not None:
            remote_munmap(self.tracee, self.gadget, self._scratch, SCRATCH_SIZE)
            self._scratch = None

    def malloc_many(self, sizes: list[int]) -> list[int]:
        self.flush()
        return batch_malloc(self.tracee, self.gadget, self.function("malloc"), sizes)

    def string(self, text: str | bytes) -> int:
        data = _c_string(text)
        addr = self.call("malloc", len(data))
        if addr == 0:
            raise RestoreFailed("the new process is out of memory.")
        self.tracee.write(addr, data)
        return addr

    def symbol_address(self, name: str) -> int:
        base, _, library = name.partition("@")
        if library:
            return find_function(self.tracee.pid, base)
        sym = self.program.symbols.by_name.get(base)
        if sym is None:
            raise ConversionError(f"v2 has no symbol {base}, which a pointer of v1 points to.")
        return sym.addr + self.bias

    def write(self, addr: int, data: bytes) -> None:
        self.tracee.write(addr, data)

    def write_later(self, addr: int, data: bytes) -> None:
        """Queue a write; queued writes land together, before the next call into the
        process and at the latest when `flush` is called."""
        self._queued.append((addr, data))
        if len(self._queued) >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        """Do the queued writes, many per system call."""
        queued, self._queued = self._queued, []
        self.tracee.write_many(queued)

    def set_field(self, address: int, type_name: str, field_name: str, value: Any) -> None:
        assert self.encoder is not None
        self.encoder.set_field(address, type_name, field_name, value)
