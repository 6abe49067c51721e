"""Bring a freshly exec'd version up to its first update point, writing state at its tags.

The new program runs its own start-up.  Its marks are armed from the exec
stop on, so every `EKIDEN_TAG(v)` stops it: the tool writes v's transferred
or transformed value there and the tag answers false, or leaves v alone and
the tag answers true.  The first update point the new version reaches ends
the restore.  Start-up runs under PTRACE_SYSCALL so that an exit during
start-up is caught at its syscall entry, while the process can still be
rolled back.

The program's own signals that arrive meanwhile (a child exiting, say) are
held, not delivered: the new version's start-up still has default
dispositions, and the tags written after its handlers ran would overwrite
what they did.  They are sent again (with kill, so their siginfo names the
tool as sender) once the version stands at its update point; held signals
a failed restore leaves go to the version the rollback restores.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from ekiden_trace.binary.program import TaggedVariable
from ekiden_trace.errors import EkidenError, TargetError, WaitTimeout
from ekiden_trace.faults import fault_point, kill_point
from ekiden_trace.plan.planner import UpdatePlan
from ekiden_trace.plan.transformers import Transformers
from ekiden_trace.state.backend import ProcessBackend, RestoreFailed, program_bias
from ekiden_trace.state.control import (
    KIND_POINT,
    KIND_TAG,
    STOP_SIGNAL_CANDIDATES,
    ControlBlock,
    MarkStop,
    choose_stop_signal,
    mark_injector,
)
from ekiden_trace.state.decode import Decoder, HeapPointer
from ekiden_trace.state.encode import Encoder
from ekiden_trace.state.locate import frame_functions
from ekiden_trace.state.rendezvous import halt
from ekiden_trace.state.snapshot import NEW_ADDRESS, Snapshot, Unfollowed
from ekiden_trace.state.views import wrap
from ekiden_trace.target.address_space import LiveProcess
from ekiden_trace.target.images import SYSCALL_BYTES
from ekiden_trace.target.ptrace import user_regs_struct
from ekiden_trace.target.tracee import Tracee

EXIT_SYSCALLS = frozenset({60, 231})  # exit, exit_group
SIGNAL_SYSCALLS = frozenset({13, 14})  # rt_sigaction, rt_sigprocmask: may take the stop signal
GETPID = 39  # the first system call of a mark's slow path
CRASH_SIGNALS = {
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGILL,
    signal.SIGFPE,
    signal.SIGABRT,
    signal.SIGSYS,
    signal.SIGTRAP,
}


@dataclass
class RestoreResult:
    """What the restore wrote."""

    point: str
    written: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    not_reached: list[str] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0
    calls: int = 0  # transformers' calls into the new version's code


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
        held: list[int],
    ) -> None:
        """`held`: the program's signals held so far, delivered (and emptied) at the end."""
        self.tracee = tracee
        self.plan = plan
        self.new = plan.new
        self.snapshot = snapshot
        self.transformers = transformers
        self.point = point
        self.signo = signo
        self.held = held
        self.bias = program_bias(tracee.pid, self.new)
        self.control = ControlBlock(tracee, self.new.marks.control + self.bias)
        self.injector = mark_injector(tracee, self.new, self.bias)
        self.backend = ProcessBackend(self.injector, self.new, self.bias)
        self.encoder = Encoder(plan.old, self.new, snapshot, transformers, self.backend)
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
        in_mark = False
        watched = EXIT_SYSCALLS | SIGNAL_SYSCALLS | {GETPID}
        while True:
            try:
                stop = self.tracee.run_syscalls(watched, deadline, cont=in_mark)
            except WaitTimeout:
                halt(self.tracee)
                raise RestoreFailed(
                    f"the new version did not reach an update point within {timeout:g} s."
                ) from None
            in_mark = False
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
                    self.held.append(stop.signo)  # the program's own: for the end
        result.not_reached = sorted(self._pending)
        if result.not_reached:
            raise RestoreFailed(
                "the new version reached an update point before the tags of "
                f"{', '.join(result.not_reached)}; place those tags before its first update point."
            )
        self.backend.close()
        self.control.guard(False)  # all state is written: v2 may run free
        for signo in dict.fromkeys(self.held):
            os.kill(self.tracee.pid, signo)  # pending until it resumes, its handlers ready
        self.held.clear()
        result.objects = self.encoder.objects_written
        result.bytes = self.encoder.bytes_written
        result.calls = self.encoder.context.calls
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
        keep a usable stop signal across rt_sigaction/rt_sigprocmask; True at the first
        system call of a mark's slow path (failing the restore if the mark could not report
        its stop).  From there the mark cannot exit before it reports its stop (it waits
        for the tool while the update is guarded), so it may run on without a stop at each
        of its system calls."""
        regs = self.tracee.regs()
        if regs.orig_rax in EXIT_SYSCALLS:
            self._refuse_exit(regs)
        if regs.orig_rax in SIGNAL_SYSCALLS:
            self.tracee.syscall()
            self.tracee.wait_stop(5.0)  # its exit
            self._keep_a_stop_signal()
            return False
        if regs.rip != self.injector.gadget + len(SYSCALL_BYTES):
            return False
        if not self._usable(self.signo):
            self.tracee.syscall()
            self.tracee.wait_stop(5.0)  # to its exit, where the rollback can inject
            names = ", ".join(signal.Signals(s).name for s in STOP_SIGNAL_CANDIDATES)
            raise RestoreFailed(
                f"the new version blocks or catches all of {names} in its start-up, so its "
                "marks cannot report to ekiden-trace; leave one of them at its default action."
            )
        return True

    def _usable(self, signo: int) -> bool:
        """Whether the new version neither blocks nor catches `signo` now."""
        blocked, _ignored, caught = self.tracee.signal_masks()
        return signo not in blocked and signo not in caught

    def _keep_a_stop_signal(self) -> None:
        """After a call that may block or catch signals: if the new version took the stop
        signal, its marks use another one from now on.  With none left (perhaps only for a
        moment, as fork() blocks them all), the next mark fails the restore."""
        if self._usable(self.signo):
            return
        try:
            self.signo = choose_stop_signal(self.tracee)
        except TargetError:
            return
        self.control.use_signal(self.signo)

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

    def _current(self, tag: TaggedVariable, addr: int, size: int) -> Any:
        """v2's own value of a tagged variable at its tag (for `ctx.current`); its
        pointers are v2's addresses, carried as they are."""
        live = LiveProcess(self.tracee.pid, self.new)
        live.stopped(self.tracee)
        decoder = Decoder(live, self.tracee.read, _keep_address)
        value = decoder.decode(tag.variable.type, self.tracee.read(addr, size), 0)
        return wrap(value, self.snapshot, tag.c_type)

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
                wrap(old.value, self.snapshot, old.c_type)
                if old is not None and old.value is not None
                else None
            )
            context = self.encoder.context
            context.producing(lambda: self._current(tag, addr, size))
            try:
                value: Any = self.encoder.transform(
                    produce, tag.name, view, tag.variable.type, tag.name
                )
            finally:
                context.producing(None)
        else:
            if old is None or old.value is None:
                return
            value = old.value
        fault_point("restore-write")
        # The base is v2's memory at the tag, whatever the scope: what the transferred value
        # does not cover (a new field) keeps what v2's own code put there.
        buf = bytearray(self.tracee.read(addr, size))
        if not self._heap_written:
            self._write_carried_heap()
        self.encoder.materialise([(value, tag.variable.type)])
        self.encoder.encode(value, tag.variable.type, buf, 0, tag.name)
        self.tracee.write(addr, bytes(buf))
        self.control.answer(0)
        kill_point("restore")
        self._pending.discard(tag.key)
        result.written.append(tag.key)


def _keep_address(pointer: HeapPointer) -> None:
    """A pointer of v2's own value into v2's heap: already right, carried as it is."""
    pointer.pointer.target = Unfollowed(NEW_ADDRESS)
