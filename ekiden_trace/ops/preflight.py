"""Every refusal made before the pause: the target, the binaries, the update point.

Each check reads files and /proc only; none stops the process.
"""

from __future__ import annotations

import os

from ekiden_trace.binary.files import file_identity, hold, same_file
from ekiden_trace.binary.program import Program
from ekiden_trace.errors import BinaryError, TargetError
from ekiden_trace.target import procfs
from ekiden_trace.target.staging import StagingRefused, open_root
from ekiden_trace.target.tracee import check_traceable


class Unupdatable(TargetError):
    """The process could not exec the new version itself (chrooted, or its user may not
    execute the file); found before anything touched it."""


def check_trusted(pid: int, new: Program, force: bool) -> None:
    """BinaryError for a new binary that others could have changed, unless forced."""
    info = new.path.stat()
    uid, _ = procfs.uid_gid(pid)
    if force:
        return
    if info.st_mode & 0o002:
        raise BinaryError(
            f"{new.path} is writable by any user, so it may not be what was checked; "
            "fix its permissions, or pass --force."
        )
    if info.st_uid not in (0, uid):
        raise BinaryError(
            f"{new.path} is owned by uid {info.st_uid}, neither root nor the target's user "
            f"(uid {uid}); pass --force if you trust it."
        )


def must_stage(pid: int, new: Program) -> bool:
    """True when the process cannot see `new` (or its loader) as the tool does, from its
    root (it is chrooted): its exec needs them staged inside that root."""
    paths = filter(None, (str(new.path.resolve()), new.elf.interpreter))
    return not all(same_file(procfs.root_path(pid, path), path) for path in paths)


def check_reachable(pid: int, new: Program) -> None:
    """Unupdatable unless the process could exec `new`: the same file (and its
    interpreter) seen from the process's root, executable with its credentials, or, for a
    chrooted process, a root the new version can be staged in (files open to all)."""
    if must_stage(pid, new):
        try:
            os.close(open_root(pid))
        except StagingRefused as error:
            raise Unupdatable(
                f"process {pid} cannot see {new.path} from its root directory and {error}; "
                "it is left as it is."
            ) from None
        return
    uid, gid = procfs.uid_gid(pid)
    info = new.path.stat()
    if uid == 0:
        allowed = bool(info.st_mode & 0o111)
    elif uid == info.st_uid:
        allowed = bool(info.st_mode & 0o100)
    elif gid == info.st_gid:
        allowed = bool(info.st_mode & 0o010)
    else:
        allowed = bool(info.st_mode & 0o001)
    if not allowed:
        raise Unupdatable(
            f"process {pid} runs as uid {uid}, which may not execute {new.path}; "
            "fix the file's permissions."
        )


def program_of(pid: int) -> Program:
    """The marked program a process runs, read from the very image it runs (before touching
    it), never from its path: a package upgrade may have renamed a new file over that path,
    or deleted it.  The image is held open for the tool's life (`hold`)."""
    check_traceable(pid)
    try:
        name = procfs.exe_link(pid)
        held = hold(procfs.exe_path(pid))
    except PermissionError:
        raise TargetError(
            f"process {pid} belongs to another user and its executable cannot be read; "
            "run ekiden-trace as that user or as root."
        ) from None
    except OSError:
        raise TargetError(
            f"process {pid} has no executable (a kernel thread?); pick a user process."
        ) from None
    return Program(held, name)


def check_point(program: Program, point: str | None) -> None:
    """BinaryError unless `point` is None or an update point of the program."""
    if point is not None and point not in program.point_names:
        known = ", ".join(sorted(program.point_names)) or "none"
        raise BinaryError(
            f"{program.path} has no update point named {point}; its points are: {known}."
        )


def check_still_running(pid: int, identity: tuple[int, ...]) -> None:
    """TargetError unless process `pid` still runs the file whose identity was recorded
    when it was read (another tool may have updated it since)."""
    if file_identity(procfs.exe_path(pid)) != identity:
        raise TargetError(
            f"process {pid} no longer runs the program that was read for this command "
            f"(it runs {os.path.realpath(procfs.exe_path(pid))} now: updated by another "
            "command?); run the command again."
        )


def check_not_stopped(pid: int) -> None:
    """TargetError for a process stopped by SIGSTOP or job control: it could not reach an
    update point before someone continues it."""
    if procfs.status(pid).get("State", "")[:1] == "T":
        raise TargetError(
            f"process {pid} is stopped (SIGSTOP or job control), so it cannot reach an update "
            f"point; continue it (kill -CONT {pid}) and run the command again. Nothing was "
            "changed."
        )
