"""The new process as encoding and transformers see it: calls, malloc, symbols, writes."""

from __future__ import annotations

from collections.abc import Sequence

from ekiden_trace.binary.program import Program
from ekiden_trace.errors import EkidenError
from ekiden_trace.state.encode import ConversionError
from ekiden_trace.target.images import load_bias
from ekiden_trace.target.inject import SCRATCH_SIZE, Injector

WRITE_BATCH = 4096  # queued writes land in batches of this many (4 system calls)


class RestoreFailed(EkidenError):
    """The new version could not be brought up with its state (the caller rolls back)."""

    exit_code = 9


def program_bias(pid: int, program: Program) -> int:
    """Load bias of `program` in process `pid` (see target.images.load_bias); RestoreFailed
    when the process runs another file."""
    bias = load_bias(pid, program.path)
    if bias is None:
        raise RestoreFailed(f"process {pid} does not run {program.path} after the exec.")
    return bias


def _c_string(text: str | bytes) -> bytes:
    return (text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text) + b"\0"


class ProcessBackend:
    """The new process, as encoding and transformers see it: calls, malloc, symbols, writes."""

    def __init__(self, injector: Injector, program: Program, bias: int) -> None:
        self.injector = injector
        self.tracee = injector.tracee
        self.program = program
        self.bias = bias
        self._queued: list[tuple[int, bytes]] = []

    def function(self, name: str) -> int:
        """Runtime address of a function of the program or of a library it loaded."""
        base, _, library = name.partition("@")
        sym = self.program.symbols.by_name.get(base) if not library else None
        if sym is not None:
            return sym.addr + self.bias
        return self.injector.function(base)

    def call(self, function: str, *args: int | str | bytes) -> int:
        """Call a function in the new process; str/bytes arguments are passed as C strings
        placed in the injector's scratch area, so nothing is left allocated after the call."""
        self.flush()  # the function may read what was written
        values, used = [], 0
        for arg in args:
            if not isinstance(arg, str | bytes):
                values.append(int(arg))
                continue
            data = _c_string(arg)
            if used + len(data) > SCRATCH_SIZE:
                raise RestoreFailed(f"the arguments of {function} exceed {SCRATCH_SIZE} bytes.")
            addr = self.injector.scratch_area() + used
            self.tracee.write(addr, data)
            values.append(addr)
            used += len(data)
        return self.injector.call(self.function(function), *values)

    def close(self) -> None:
        """Give the scratch area back to the new process."""
        self.injector.close()

    def malloc_many(self, sizes: Sequence[int]) -> Sequence[int]:
        """One object per size (an array('Q') of sizes gets an array of addresses)."""
        self.flush()
        return self.injector.batch_malloc(self.function("malloc"), sizes)

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
            return self.injector.function(base)
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
