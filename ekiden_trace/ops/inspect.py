"""`inspect`: stop a live process briefly, capture its tagged state, and leave it as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from ekiden_trace.binary.files import file_identity
from ekiden_trace.native.build import core
from ekiden_trace.ops.lock import locked
from ekiden_trace.ops.preflight import (
    check_not_stopped,
    check_point,
    check_still_running,
    program_of,
)
from ekiden_trace.ops.recover import check_not_mid_update, refuse_mid_update
from ekiden_trace.state.capture import Capturer
from ekiden_trace.state.control import STOP_FUNCTION, ControlBlock, choose_stop_signal
from ekiden_trace.state.rendezvous import leave, wait_for_point
from ekiden_trace.state.snapshot import Snapshot, StopLocation
from ekiden_trace.target import procfs
from ekiden_trace.target.address_space import LiveProcess
from ekiden_trace.target.disasm import instructions_around
from ekiden_trace.target.tracee import Tracee
from ekiden_trace.target.unwind import Frame, Frames


@dataclass(frozen=True)
class InspectOptions:
    """What `inspect` was asked for."""

    point: str | None = None
    now: bool = False
    timeout: float = 10.0


def _stop_location(live: LiveProcess, frames: list[Frame], point: str | None) -> StopLocation:
    """Where the program's own code stands: the innermost frame of the program that is not
    the marks' slow path (at --now that may be below library frames, e.g. poll)."""
    named: dict[int, str] = {}  # a deep recursion repeats its pcs
    names = [
        named.get(f.lookup_pc) or named.setdefault(f.lookup_pc, live.code_name(f.lookup_pc))
        for f in frames
    ]
    if point and names and names[0] == STOP_FUNCTION:
        frames, names = frames[1:], names[1:]
    own = next((f for f in frames if live.region(f.lookup_pc) == "code"), None)
    pc = own.lookup_pc if own else (frames[0].pc if frames else 0)
    function = live.program.index.function_at(pc - live.bias) if own else None
    line = live.program.index.line_at(pc - live.bias) if own else None
    return StopLocation(
        point=point,
        pc=pc,
        function=function.name if function else None,
        file=line[0] if line else None,
        line=line[1] if line else None,
        frames=names,
    )


def _code_around(live: LiveProcess, pc: int) -> list[str]:
    start = live.code_start(pc)
    assert live.tracee is not None
    try:
        return instructions_around(live.tracee.read, start if start is not None else pc, pc)
    except OSError:
        return []


def capture_stopped(live: LiveProcess, tracee: Tracee, point: str | None, now: bool) -> Snapshot:
    """Capture the tagged state of a tracee stopped at `point` (or anywhere, with now)."""
    stop, frames = stop_of(live, tracee, point, now)
    return Capturer(live).capture(stop, frames)


def stop_of(
    live: LiveProcess, tracee: Tracee, point: str | None, now: bool
) -> tuple[StopLocation, Frames]:
    """Where a stopped tracee stands, bound to `live`: what a capture starts from."""
    live.stopped(tracee)
    frames = live.frames()
    stop = _stop_location(live, frames, point)
    if now and frames:
        stop.code = _code_around(live, frames[0].pc)
    return stop, frames


@contextlib.contextmanager
def stopped(pid: int, options: InspectOptions) -> Iterator[tuple[LiveProcess, Tracee, str | None]]:
    """Process `pid` stopped at an update point (anywhere, with --now) for as long as the
    block runs: (its LiveProcess, the tracee, the point); left as it was afterwards."""
    program = program_of(pid)
    check_not_mid_update(pid, program)
    running = file_identity(procfs.exe_path(pid))
    check_point(program, options.point)
    if not options.now:  # --now reads a stopped process as well
        check_not_stopped(pid)
    _ = program.tags  # resolve tags before the pause
    live = LiveProcess(pid, program)
    core()  # the compiled core: its first use builds it, before the process stops
    tracee = Tracee.seize(pid)
    control = None
    try:
        check_still_running(pid, running)
        block = ControlBlock(tracee, program.marks.control + live.bias)
        block.check()
        refuse_mid_update(block, pid)
        point = None
        if not options.now:
            control = block
            signo = choose_stop_signal(tracee)
            point = wait_for_point(
                tracee, control, signo, options.point, options.timeout, live
            ).what
        yield live, tracee, point
    finally:
        leave(tracee, control)


@locked
def inspect(pid: int, options: InspectOptions) -> Snapshot:
    """Capture the tagged state of process `pid`; it keeps running, untouched, afterwards."""
    with stopped(pid, options) as (live, tracee, point):
        return capture_stopped(live, tracee, point, options.now)
