"""The control block of a marked program (`struct ekiden_control` in probes/ekiden.h).

Its layout is the ABI between the marks and the tool; the offsets below must
match the header, and the magic and ABI version are checked before use.
"""

from __future__ import annotations

import signal
import struct
from dataclasses import dataclass

from ekiden_trace.binary.program import Program
from ekiden_trace.errors import TargetError
from ekiden_trace.target import procfs
from ekiden_trace.target.images import file_gadget
from ekiden_trace.target.inject import Injector
from ekiden_trace.target.tracee import Tracee

MAGIC = 0x4E444B45
ABI_VERSION = 1
KIND_POINT, KIND_TAG = 1, 2
# The marks' slow path: the function a mark stops in, whose `syscall`s raise the stop signal.
STOP_FUNCTION = "ekiden__stop"


def find_mark_gadget(program: Program) -> None:
    """Decode the `syscall` of the marks' slow path from the program's file (and its debug
    file's symbols, when stripped) now, before a pause needs it: cached by path."""
    file_gadget(str(program.path), STOP_FUNCTION, program.debug_path)


def mark_injector(tracee: Tracee, program: Program, bias: int) -> Injector:
    """An injector for a process running `program` at load bias `bias`, through the
    `syscall` of its marks' slow path (one read confirms it), else any other gadget."""
    return Injector.for_tracee(tracee, str(program.path), STOP_FUNCTION, bias, program.debug_path)


OFF_MAGIC = 0
OFF_ARMED = 8
OFF_SIGNO = 12
OFF_UPDATING = 16
OFF_KIND = 20
OFF_WHAT = 24
OFF_ADDR = 32
OFF_SIZE = 40
OFF_ANSWER = 48
OFF_GUARDED = 52
OFF_FROM = 56
FROM_SIZE = 64
BLOCK_SIZE = OFF_FROM + FROM_SIZE

# Signals whose default action is to ignore them: if the tool dies after arming,
# the program's own stop signal is then delivered and does nothing.
STOP_SIGNAL_CANDIDATES = (signal.SIGURG, signal.SIGWINCH, signal.SIGCHLD)


@dataclass(frozen=True)
class MarkStop:
    """What the program reported when it stopped in a mark's slow path."""

    kind: int
    what: str
    addr: int
    size: int


def choose_stop_signal(tracee: Tracee) -> int:
    """A default-ignored signal the target neither blocks nor catches."""
    blocked, _ignored, caught = tracee.signal_masks()
    for signo in STOP_SIGNAL_CANDIDATES:
        if signo not in blocked and signo not in caught:
            return int(signo)
    names = ", ".join(signal.Signals(s).name for s in STOP_SIGNAL_CANDIDATES)
    raise TargetError(
        f"process {tracee.pid} blocks or handles all of {names}, so its marks cannot report "
        "to ekiden-trace; leave one of them at its default action."
    )


def guarded_at(pid: int, address: int) -> bool:
    """Whether the control block at `address` in process `pid` (not traced: read as it
    runs) says an update was left under way."""
    try:
        raw = procfs.read_memory(pid, address, BLOCK_SIZE)
    except OSError:
        return False  # unreadable here: the check after seizing it decides
    if len(raw) < BLOCK_SIZE or struct.unpack_from("<I", raw, OFF_MAGIC)[0] != MAGIC:
        return False
    return struct.unpack_from("<i", raw, OFF_GUARDED)[0] != 0


class ControlBlock:
    """The live control block of one traced process, at its runtime address."""

    def __init__(self, tracee: Tracee, address: int) -> None:
        self.tracee = tracee
        self.address = address

    def check(self) -> None:
        """Verify magic and ABI version; TargetError when they do not match."""
        magic, abi = struct.unpack("<II", self.tracee.read(self.address, 8))
        if magic != MAGIC:
            raise TargetError(
                f"process {self.tracee.pid} has no initialised ekiden control block at "
                f"{self.address:#x}; is it running the binary that was read?"
            )
        if abi != ABI_VERSION:
            raise TargetError(
                f"process {self.tracee.pid} was built with ekiden.h ABI {abi}, this tool "
                f"speaks ABI {ABI_VERSION}; rebuild it or use a matching ekiden-trace."
            )

    def _write_int(self, offset: int, value: int) -> None:
        self.tracee.write(self.address + offset, struct.pack("<i", value))

    def arm(self, signo: int) -> None:
        """Make the next mark stop the program with `signo` (one shot)."""
        self._write_int(OFF_KIND, 0)
        self.tracee.write(self.address + OFF_ARMED, struct.pack("<ii", 1, signo))

    def use_signal(self, signo: int) -> None:
        """Make the next mark stops report with `signo` instead (the marks stay armed)."""
        self._write_int(OFF_SIGNO, signo)

    def disarm(self) -> None:
        """Return every mark to its fast path."""
        self._write_int(OFF_ARMED, 0)

    def pending_stop(self) -> MarkStop | None:
        """The mark stop the program has reported and the tool not yet taken, if any."""
        raw = self.tracee.read(self.address, BLOCK_SIZE)
        kind, what, addr, size = struct.unpack_from("<iQQQ", raw, OFF_KIND)
        if kind == 0:
            return None
        name = self.tracee.read_cstring(what, 256).decode("latin-1") if what else ""
        return MarkStop(kind, name, addr, size)

    def answer(self, value: int) -> None:
        """What the tag being served returns: 0 = value written, 1 = initialise normally."""
        self._write_int(OFF_ANSWER, value)

    def begin_update(self, point: str, signo: int) -> None:
        """Set up a freshly exec'd program for its restore, in one write: started by an
        update at `point`, guarded (marks wait for a guardian if the tool dies), and
        armed, so that every mark stops it with `signo`."""
        block = bytearray(BLOCK_SIZE - OFF_ARMED)
        struct.pack_into("<iiii", block, 0, 1, signo, 1, 0)  # armed, signo, updating, kind
        struct.pack_into("<ii", block, OFF_ANSWER - OFF_ARMED, 1, 1)  # answer, guarded
        name = point.encode()[: FROM_SIZE - 1]
        block[OFF_FROM - OFF_ARMED :] = name.ljust(FROM_SIZE, b"\0")
        self.tracee.write(self.address + OFF_ARMED, bytes(block))

    def guard(self, on: bool) -> None:
        """Mark an update as under way (marks then wait for a guardian if the tool dies)."""
        self._write_int(OFF_GUARDED, int(on))

    def is_guarded(self) -> bool:
        """Whether an update of this process was left under way."""
        return struct.unpack("<i", self.tracee.read(self.address + OFF_GUARDED, 4))[0] != 0

    def take_stop(self) -> None:
        """Mark the reported stop as handled."""
        self._write_int(OFF_KIND, 0)
