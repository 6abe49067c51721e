"""`attach --new`: update one live process to a new version, with rollback.

Order of work, so that everything slow or fallible comes before the pause:
read both binaries and plan (process untouched) -> seize -> wait at an update
point (pause starts) -> capture -> check the captured pointers -> clear
FD_CLOEXEC -> exec the new binary in place -> restore at its tags -> its first
update point (pause ends) -> detach.  A failure before the exec leaves v1 as
it was; a failure after it execs v1 again and restores v1's own snapshot, so
the process keeps its PID, its fds and its state.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from ekiden_trace.binary.files import file_identity, held_descriptor
from ekiden_trace.binary.program import Program
from ekiden_trace.errors import BinaryError, EkidenError, describe_failure
from ekiden_trace.faults import kill_point
from ekiden_trace.native.build import core
from ekiden_trace.ops.guardian import Guardian
from ekiden_trace.ops.inspect import capture_stopped
from ekiden_trace.ops.lock import locked
from ekiden_trace.ops.preflight import (
    check_not_stopped,
    check_point,
    check_reachable,
    check_still_running,
    check_trusted,
    must_stage,
    program_of,
)
from ekiden_trace.ops.recover import check_not_mid_update, refuse_mid_update
from ekiden_trace.ops.rollback import GuardState, own_fds, roll_back_to
from ekiden_trace.plan.planner import UpdatePlan, describe_drop, plan_update
from ekiden_trace.plan.transformers import Transformers, load_transformers
from ekiden_trace.state.backend import RestoreFailed
from ekiden_trace.state.checks import check_snapshot
from ekiden_trace.state.control import (
    ControlBlock,
    choose_stop_signal,
    find_mark_gadget,
    mark_injector,
)
from ekiden_trace.state.rendezvous import halt, leave, wait_for_point
from ekiden_trace.state.restore import Restorer, RestoreResult
from ekiden_trace.state.snapshot import Snapshot
from ekiden_trace.target import procfs
from ekiden_trace.target.address_space import LiveProcess
from ekiden_trace.target.images import load_image
from ekiden_trace.target.inject import InjectionError, Injector, find_function
from ekiden_trace.target.staging import Staged, stage, unstage
from ekiden_trace.target.tracee import Tracee, sharing_cpu


class PlanRefused(EkidenError):
    """The update cannot be done automatically; nothing was touched."""

    exit_code = 10


class DropRefused(EkidenError):
    """The update would throw away v1 state that nothing acknowledges; nothing was touched."""

    exit_code = 9


class RolledBack(EkidenError):
    """The update failed after the exec; the process runs its old version again."""

    exit_code = 11

    def __init__(self, message: str, report: UpdateReport, cause: Exception) -> None:
        super().__init__(message)
        self.report = report
        self.cause = cause


@dataclass(frozen=True)
class UpdateOptions:
    """What `attach` was asked for."""

    new: str
    args: list[str] | None = None
    point: str | None = None
    xform: str | None = None
    timeout: float = 10.0
    force: bool = False
    allow_drop: bool = False


@dataclass
class UpdateReport:
    """What happened, phase by phase.  `moved`, `objects` and `bytes` are what was written
    into the version that runs afterwards: the new one, or the old one after a rollback."""

    pid: int
    old: str
    new: str
    point: str = ""
    outcome: str = "not started"
    phases: dict[str, float] = field(default_factory=dict)
    pause: float = 0.0
    moved: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    inactive: list[str] = field(default_factory=list)  # locals of functions not running in v1
    objects: int = 0
    bytes: int = 0
    calls: int = 0  # transformers' calls into the new version (what they built is not counted)
    staged: tuple[int, float] | None = None  # chrooted: bytes staged in its root, seconds
    notes: list[str] = field(default_factory=list)
    capture: str = ""  # the capture's engine: "compiled", or "python: <why>" (Snapshot.engine)


def version_names(old: str, new: str) -> tuple[str, str]:
    """How a report names the old and the new version: by their binaries' file names (a new
    binary may be a downgrade, or v3), or by their paths when the file names are the same."""
    names = os.path.basename(old), os.path.basename(new)
    return names if names[0] != names[1] else (old, new)


def _by_name(note: str, names: tuple[str, str]) -> str:
    """A plan note, which calls the versions by their roles v1 and v2, with their names."""
    return re.sub(r"\bv([12])\b", lambda m: names[int(m.group(1)) - 1], note)


class _Clock:
    def __init__(self, report: UpdateReport) -> None:
        self.report = report
        self.last = time.monotonic()
        self.paused = self.last

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.report.phases[phase] = now - self.last
        self.last = now

    def pause_starts(self) -> None:
        self.paused = self.last

    def pause_ends(self) -> None:
        """The process runs free again: the new version, or the old one after a rollback."""
        self.report.pause = time.monotonic() - self.paused


@dataclass(frozen=True)
class Prepared:
    """Everything an update needs that does not depend on one process: made once."""

    old: Program
    new: Program
    plan: UpdatePlan
    identity: UpdatePlan  # v1 -> v1, for the rollback
    transformers: Transformers
    checked: tuple[int, ...]  # the new binary's file identity when it was checked
    running: tuple[int, ...]  # the identity of the file the process ran when it was read


def prepare(pid: int, options: UpdateOptions) -> Prepared:
    """Read both binaries and plan; raises before anything touches the process."""
    old = program_of(pid)
    check_not_mid_update(pid, old)
    running = file_identity(procfs.exe_path(pid))
    new = Program(os.path.abspath(options.new))  # the target execs it from its own cwd
    if not new.points:
        raise BinaryError(f"{new.path} has no update point, so an update to it could never finish.")
    check_point(old, options.point)
    transformers = load_transformers(options.xform)
    transformers.add_hints(old.hints)
    plan = plan_update(old, new, transformers)
    if not plan.ok:
        listed = "; ".join(plan.problems[:5])
        raise PlanRefused(
            f"v1's state cannot be mapped onto {new.path} without transformers: {listed}. "
            "Run `ekiden-trace diff` for the full report."
        )
    if plan.unacknowledged and not options.allow_drop:
        listed = "; ".join(describe_drop(d) for d in plan.unacknowledged[:5])
        raise DropRefused(
            f"the update would drop old state: {listed}. Acknowledge each with drop(...) or "
            "rename(...) in a --xform file, or pass --allow-drop."
        )
    identity = plan_update(old, old, Transformers())
    _warm(old, new)
    checked = file_identity(str(new.path))
    return Prepared(old, new, plan, identity, transformers, checked, running)


def _warm(*programs: Program) -> None:
    """Compute now what the pause would otherwise compute on first use: each version's
    symbol table, its file decoded for the `syscall` of its marks (and so its image), and
    the compiled core."""
    for program in programs:
        _ = program.symbols
        find_mark_gadget(program)
    core()  # built once into the cache, loaded here rather than mid-restore


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """No cyclic garbage collection meanwhile: one over the debug info of both versions
    can take longer than a whole pause.  Garbage is collected after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@locked
@_no_gc()
def update(pid: int, options: UpdateOptions, prepared: Prepared | None = None) -> UpdateReport:
    """Update process `pid` to options.new; raises with the process running v1 on failure."""
    prepared = prepared or prepare(pid, options)
    report = UpdateReport(pid, prepared.old.name, options.new)
    clock = _Clock(report)
    old, plan = prepared.old, prepared.plan
    check_reachable(pid, prepared.new)
    check_not_stopped(pid)
    check_trusted(pid, prepared.new, options.force)
    report.dropped = [d.what for d in plan.drops]
    names = version_names(report.old, report.new)
    report.notes = [
        f"{t}: {_by_name(n, names)}" for t, notes in plan.type_notes.items() for n in notes
    ]
    old_argv = procfs.cmdline(pid)
    argv = old_argv if options.args is None else [old_argv[0], *(a.encode() for a in options.args)]
    envp = procfs.environ(pid)
    live = LiveProcess(pid, old)
    # The new version loads the same libc: resolving malloc now parses its symbols
    # (cached by file) before the pause instead of during the restore.
    find_function(pid, "malloc")
    with _staging(pid, prepared) as staged:
        return _update(pid, options, prepared, staged, clock, live, (old_argv, argv, envp))


def _update(
    pid: int,
    options: UpdateOptions,
    prepared: Prepared,
    staged: Staged | None,
    clock: _Clock,
    live: LiveProcess,
    context: tuple[list[bytes], list[bytes], list[bytes]],
) -> UpdateReport:
    """The update from the guardian's start on, the checks done (and the new version
    staged in a chrooted process's root)."""
    report = clock.report
    old = prepared.old
    old_argv, argv, envp = context  # the command line it runs, the one to exec, environment
    guardian = Guardian(pid, keep=[held_descriptor(old.path), staged and staged.root_fd])
    if staged is not None:
        guardian.watch_staging(staged.root_fd, staged.name)
        report.staged = (staged.bytes, staged.seconds)
    clock.lap("plan")
    kill_point("planned")
    tracee = Tracee.seize(pid)
    kill_point("attached")
    block = ControlBlock(tracee, old.marks.control + live.bias)
    control: ControlBlock | None = None  # disarmed on the way out, once armed
    try:
        check_still_running(pid, prepared.running)
        block.check()
        refuse_mid_update(block, pid)
        control = block
        signo = choose_stop_signal(tracee)
        injector = mark_injector(tracee, old, live.bias)
        report.point = wait_for_point(
            tracee, block, signo, options.point, options.timeout, live
        ).what
        clock.lap("wait")
        clock.pause_starts()
        guardian.watch_cpus(pid)
        with sharing_cpu(pid):  # the tool and the process hand over to each other many times
            snapshot = _capture(live, tracee, prepared.plan, report.point)
            report.inactive = [v.key for v in snapshot.variables if v.absent and not v.lost]
            report.capture = snapshot.engine
            clock.lap("capture")
            blocked, ignored, _ = tracee.signal_masks()
            state = GuardState(
                pid,
                str(old.path),
                old.name,
                snapshot,
                report.point,
                signo,
                old_argv,
                envp,
                [],
                options.timeout,
                frozenset(blocked),
                frozenset(ignored),
                staged_old=staged and staged.path(str(old.path)),
            )
            new_path = staged.path(str(prepared.new.path)) if staged else str(prepared.new.path)
            _exec_new(injector, guardian, state, new_path, argv)
            control = None  # the old control block went away with the old image
            clock.lap("exec")
            _restore_new(tracee, prepared, state, clock)
        clock.pause_ends()
        clock.lap("restore")
        report.outcome = "updated"
        if not guardian.alive():
            report.notes.append("the guardian died during the update, which went on without it")
        kill_point("detach")
        return report
    finally:
        leave(tracee, control)
        guardian.done()


@contextlib.contextmanager
def _staging(pid: int, prepared: Prepared) -> Iterator[Staged | None]:
    """For a chrooted process, both versions with their loader and libraries staged in its
    root (a rollback execs v1 there too); None when it sees the new version as it is."""
    if not must_stage(pid, prepared.new):
        yield None
        return
    old, new = prepared.old, prepared.new
    old_name = os.path.basename(old.name.removesuffix(" (deleted)"))
    if old_name == new.path.name:  # a package upgrade: both versions had one path
        old_name += ".old"
    staged = stage(pid, [(str(new.path), new.path.name), (str(old.path), old_name)])
    try:
        if file_identity(str(new.path)) != prepared.checked:
            raise BinaryError(f"{new.path} changed between its check and its staging")
        for path in staged.files():  # the new version maps these copies, not the originals:
            load_image(path)  # read now, what the restore resolves in them is cached
        yield staged
    finally:
        unstage(staged.root_fd, staged.name)
        os.close(staged.root_fd)


def _capture(live: LiveProcess, tracee: Tracee, plan: UpdatePlan, point: str) -> Snapshot:
    """The tagged state of the stopped process; PlanRefused when it cannot be carried over."""
    snapshot = capture_stopped(live, tracee, point, now=False)
    kill_point("captured")
    problems = check_snapshot(plan, snapshot)
    if problems:
        raise PlanRefused("the captured state cannot be carried over: " + "; ".join(problems))
    return snapshot


def _exec_new(
    injector: Injector,
    guardian: Guardian,
    state: GuardState,
    new_path: str,
    argv: list[bytes],
) -> None:
    """Hand the state to the guardian, then exec the new version in place with every fd kept
    open; on failure the process runs v1 as before."""
    with contextlib.suppress(InjectionError):  # no /proc in its root: roll back by path
        state.image_fd = injector.open_path(b"/proc/self/exe", os.O_RDONLY)
    state.cleared = injector.clear_cloexec(procfs.open_fds(state.pid))
    guardian.hand_over(state)
    kill_point("cloexec")
    try:
        injector.exec_in_place(new_path, argv, state.envp)
    except EkidenError:
        injector.restore_cloexec(state.cleared, own_fds(state))
        raise


def _restore_new(tracee: Tracee, prepared: Prepared, state: GuardState, clock: _Clock) -> None:
    """Bring the freshly exec'd version up to its first update point with the state, or
    roll back to v1 and raise RolledBack."""
    report = clock.report
    restorer = None
    try:
        restorer = Restorer(
            tracee,
            prepared.plan,
            state.snapshot,
            prepared.transformers,
            state.point,
            state.signo,
            state.held,
        )
        kill_point("exec")  # the new version is guarded from here on
        if (
            state.staged_old is None
            and file_identity(procfs.exe_path(state.pid)) != prepared.checked
        ):
            raise RestoreFailed(f"{prepared.new.path} changed between its check and the exec")
        result = restorer.run(state.timeout)
    except Exception as failure:  # whatever failed, v2 must not run on half-restored
        clock.lap("restore")
        halt(tracee)  # an interruption may have come while v2 ran
        injector = restorer.injector if restorer is not None else Injector.for_tracee(tracee)
        result = roll_back_to(injector, prepared.old, state, prepared.identity)
        clock.pause_ends()
        clock.lap("rollback")
        _record(report, result)
        report.outcome = "rolled back"
        raise RolledBack(
            f"the update failed after the exec and was rolled back: {describe_failure(failure)}",
            report,
            failure,
        ) from None
    restorer.injector.restore_cloexec(state.cleared, own_fds(state))
    _record(report, result)


def _record(report: UpdateReport, result: RestoreResult) -> None:
    """What a restore wrote, into the report."""
    report.moved = result.written
    report.initialised = result.initialised
    report.objects = result.objects
    report.bytes = result.bytes
    report.calls = result.calls
