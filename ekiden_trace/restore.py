"""Bring a freshly exec'd version up to its first update point, writing state at its tags.

The new program runs its own start-up.  Its marks are armed from the exec
stop on, so every `EKIDEN_TAG(v)` stops it: the tool writes v's transferred
or transformed value there and the tag answers false, or leaves v alone and
the tag answers true.  The first update point the new version reaches ends
the restore.  Start-up runs under PTRACE_SYSCALL so that an exit during
start-up is caught at its syscall entry, while the process can still be
rolled back.
"""

from __future__ import annotations

import mmap
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from .capture import frame_functions
from .control import KIND_POINT, KIND_TAG, STOP_FUNCTION, ControlBlock, MarkStop
from .encode import ConversionError, Encoder
from .errors import EkidenError, WaitTimeout
from .faults import fault_point, kill_point
from .inject import find_function, remote_call, remote_mmap, remote_munmap, syscall_gadget
from .inject_images import SYSCALL_BYTES, load_image
from .live import LiveProcess
from .plan import UpdatePlan
from .process import Tracee, read_auxv
from .program import Program, TaggedVariable
from .ptrace import user_regs_struct
from .snapshot import Snapshot
from .stopping import halt
from .xform import Context, Transformers, View, run_transformer

EXIT_SYSCALLS = frozenset({60, 231})  # exit, exit_group
GETPID = 39  # the first system call of a mark's slow path
SCRATCH_SIZE = 1 << 20
WRITE_BATCH = 4096  # queued writes land in batches of this many (4 system calls)
AT_ENTRY = 9  # the auxiliary vector's entry point of the program
CRASH_SIGNALS = {
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGILL,
    signal.SIGFPE,
    signal.SIGABRT,
    signal.SIGSYS,
    signal.SIGTRAP,
}


class RestoreFailed(EkidenError):
    """The new version could not be brought up with its state (the caller rolls back)."""

    exit_code = 9


@dataclass
class RestoreResult:
    """What the restore wrote."""

    point: str
    written: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    not_reached: list[str] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0
    seconds: float = 0.0


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
        from .inject import batch_malloc

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


class Restorer:
    """One restore of one snapshot into the version that was just exec'd."""

    def __init__(
        self,
        tracee: Tracee,
        plan: UpdatePlan,
        snapshot: Snapshot,
        transformers: Transformers,
        point: str,
        signo: int,
    ) -> None:
        self.tracee = tracee
        self.plan = plan
        self.new = plan.new
        self.snapshot = snapshot
        self.transformers = transformers
        self.point = point
        self.signo = signo
        self.bias = load_bias(tracee.pid, self.new)
        self.control = ControlBlock(tracee, self.new.marks.control + self.bias)
        self.gadget = syscall_gadget(tracee, str(self.new.path), STOP_FUNCTION, self.bias)
        self.backend = ProcessBackend(tracee, self.new, self.bias, self.gadget)
        self.context = Context(snapshot, self.backend)
        self.encoder = Encoder(
            plan.old, self.new, snapshot, transformers, self.backend, self.context
        )
        self.backend.encoder = self.encoder
        # Guard the new version at once: if the tool dies from here on, its marks wait
        # for the guardian instead of letting a half-restored version run.
        self.control.check()
        self.control.begin_update(point, signo)
        self._old_values = {v.key: v for v in snapshot.variables}
        # Variables that must be written before the first update point: those with a
        # captured value (a local of a function that was not active has none) and those
        # a transformer produces.
        captured = {key for key, v in self._old_values.items() if v.value is not None}
        self._pending = {
            v.key
            for v in plan.variables
            if v.new is not None
            and (v.action == "transformer" or (v.action == "transfer" and v.old.key in captured))
        }
        self._heap_written = False

    def run(self, timeout: float) -> RestoreResult:
        """Resume the new version until its first update point, serving its tags."""
        started = time.monotonic()
        result = RestoreResult(self.point)
        deadline = started + timeout
        signo, in_mark = 0, False
        watched = EXIT_SYSCALLS | {GETPID}
        while True:
            try:
                stop = self.tracee.run_syscalls(watched, deadline, signo, cont=in_mark)
            except WaitTimeout:
                halt(self.tracee)
                raise RestoreFailed(
                    f"the new version did not reach an update point within {timeout:g} s."
                ) from None
            signo, in_mark = 0, False
            if stop.kind in ("exited", "killed"):
                raise EkidenError(f"process {self.tracee.pid} died during the restore ({stop}).")
            if stop.kind == "syscall":
                in_mark = self._entering_mark()
            elif stop.kind == "signal":
                reported = self.control.pending_stop() if stop.signo == self.signo else None
                if reported is not None:
                    if self._at_mark(reported, result):
                        break
                elif stop.signo in CRASH_SIGNALS:
                    name = signal.Signals(stop.signo).name
                    raise RestoreFailed(f"the new version crashed with {name} during its start-up.")
                else:
                    signo = stop.signo  # the program's own signal: deliver it
        result.not_reached = sorted(self._pending)
        if result.not_reached:
            raise RestoreFailed(
                "the new version reached an update point before the tags of "
                f"{', '.join(result.not_reached)}; place those tags before its first update point."
            )
        self.backend.close()
        self.control.guard(False)  # all state is written: v2 may run free
        result.objects = self.encoder.objects_written
        result.bytes = self.encoder.bytes_written
        result.seconds = time.monotonic() - started
        return result

    def _at_mark(self, reported: MarkStop, result: RestoreResult) -> bool:
        """At a mark's stop: serve a tag; True at an update point, where the restore ends."""
        self.control.take_stop()  # guarded: the marks stay armed
        if reported.kind == KIND_POINT:
            self.control.disarm()
            return True
        if reported.kind == KIND_TAG:
            self._serve_tag(reported.what, reported.addr, reported.size, result)
        return False

    def _entering_mark(self) -> bool:
        """At the entry of a watched system call: fail the restore at exit/exit_group;
        True at the first system call of a mark's slow path.  From there the mark cannot
        exit before it reports its stop (it waits for the tool while the update is
        guarded), so it may run on without a stop at each of its system calls."""
        regs = self.tracee.regs()
        if regs.orig_rax in EXIT_SYSCALLS:
            self._refuse_exit(regs)
        return regs.rip == self.gadget + len(SYSCALL_BYTES)

    def _refuse_exit(self, regs: user_regs_struct) -> None:
        """At the entry of exit/exit_group: cancel the call (the process must survive to be
        rolled back), step to its exit stop, and fail the restore."""
        status = regs.rdi & 0xFF
        regs.orig_rax = (1 << 64) - 1
        self.tracee.set_regs(regs)
        self.tracee.syscall()
        self.tracee.wait_stop(5.0)
        raise RestoreFailed(f"the new version called exit({status}) during its start-up.")

    def _tag_for(self, name: str, addr: int) -> TaggedVariable | None:
        candidates = [t for t in self.new.tags if t.name == name]
        for tag in candidates:
            loc = tag.variable.location
            if loc["kind"] == "addr" and loc["addr"] + self.bias == addr:
                return tag
        stack_tags = [t for t in candidates if t.variable.location["kind"] != "addr"]
        if len(stack_tags) <= 1:
            return next(iter(stack_tags), None)
        return self._innermost(stack_tags)

    def _innermost(self, tags: list[TaggedVariable]) -> TaggedVariable | None:
        """Of same-named tagged locals of several functions, the one of the innermost active
        function: the mark that stopped the process stands in it."""
        live = LiveProcess(self.tracee.pid, self.new)
        live.stopped(self.tracee)
        for frame in live.frames():
            for name in frame_functions(self.new.index, frame, live.bias):
                found = next((t for t in tags if t.variable.function == name), None)
                if found is not None:
                    return found
        return None

    def _write_carried_heap(self) -> None:
        """Allocate and write, in one batch, the heap reached by every variable that is
        carried over as it is; done at the first tag written, when v2's allocator is ready."""
        self._heap_written = True
        roots = []
        for variable in self.plan.variables:
            if variable.action != "transfer" or variable.key not in self._pending:
                continue
            old = self._old_values.get(variable.old.key) if variable.old is not None else None
            if old is not None and old.value is not None and variable.new is not None:
                roots.append((old.value, variable.new.variable.type))
        self.encoder.materialise(roots)

    def _serve_tag(self, name: str, addr: int, size: int, result: RestoreResult) -> None:
        tag = self._tag_for(name, addr)
        plan = self.plan.for_key(tag.key) if tag is not None else None
        if tag is None or plan is None or plan.action not in ("transfer", "transformer"):
            if tag is not None and tag.key not in result.initialised:
                result.initialised.append(tag.key)
            return
        if tag.key not in self._pending:
            return  # written already, or nothing was captured for it: v2 initialises it
        old = self._old_values.get(plan.old.key) if plan.old is not None else None
        if plan.action == "transformer":
            produce = self.transformers.for_variable(tag.key, tag.name)
            assert produce is not None
            view = (
                View(old.value, self.snapshot, old.c_type)
                if old is not None and old.value is not None
                else None
            )
            value: Any = run_transformer(produce, tag.name, view, self.context)
        else:
            if old is None or old.value is None:
                return
            value = old.value
        fault_point("restore-write")
        static = tag.variable.location["kind"] == "addr"
        buf = bytearray(self.tracee.read(addr, size) if static else bytes(size))
        if not self._heap_written:
            self._write_carried_heap()
        self.encoder.materialise([(value, tag.variable.type)])
        self.encoder.encode(value, tag.variable.type, buf, 0, tag.name)
        self.tracee.write(addr, bytes(buf))
        self.control.answer(0)
        kill_point("restore")
        self._pending.discard(tag.key)
        result.written.append(tag.key)
