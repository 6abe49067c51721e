"""Staging inside a chrooted process's root: the files its exec in place needs.

A chrooted process sees neither the new version nor its loader and libraries.  Before
the pause, a private directory `/.ek-XXXXXX` is made inside its root (seen from outside
through /proc/PID/root) holding each version's executable (retargeted, see
binary.retarget), the loader and the libraries; it is removed when the update ends.

The root may belong to the session's user (vsftpd's chroot_local_user), who may plant a
symbolic link there meanwhile: every step works on directory fds (mkdirat, openat with
O_NOFOLLOW and O_EXCL), checks that the directory it opened is the root-owned one it
made, and never follows a name from the root.  The directory is 0700 while being filled,
then 0555 with files 0555: the user may remove it only while empty.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import string
import time
from dataclasses import dataclass, field

from ekiden_trace.binary.elf import ElfBinary
from ekiden_trace.binary.retarget import LOADER_NAME, interp_size, libraries, retarget, room
from ekiden_trace.errors import BinaryError, TargetError

PREFIX = "/.ek-"
_ALPHABET = string.ascii_lowercase + string.digits
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class StagingRefused(TargetError):
    """The files an exec needs could not be staged inside the process's root."""


@dataclass
class Staged:
    """A staging directory: the root's fd (held by the tool and passed to the guardian),
    the directory's name in it, and the executables staged, as the process names them."""

    root_fd: int
    name: str
    executables: dict[str, str] = field(default_factory=dict)  # host source -> path in root
    bytes: int = 0
    seconds: float = 0.0

    def path(self, source: str) -> str:
        """The path, inside the root, of the staged copy of executable `source`."""
        return self.executables[source]

    def files(self) -> list[str]:
        """The staged files, by paths the tool opens them through (its fd on the root)."""
        directory = f"/proc/self/fd/{self.root_fd}/{self.name}"
        return [f"{directory}/{entry}" for entry in sorted(os.listdir(directory))]


def open_root(pid: int) -> int:
    """An fd on process pid's root directory; StagingRefused when it cannot be staged in."""
    root = f"/proc/{pid}/root"
    try:
        fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except OSError as error:
        raise StagingRefused(f"process {pid}'s root cannot be opened: {error.strerror}") from None
    refusal = _refusal(fd)
    if refusal:
        os.close(fd)
        raise StagingRefused(
            f"its root {os.readlink(root)} {refusal}, so the new version cannot be staged there"
        )
    return fd


def _refusal(fd: int) -> str | None:
    """Why nothing can be made in the directory open at `fd`, or None."""
    if os.statvfs(fd).f_flag & os.ST_RDONLY:
        return "is on a read-only filesystem"
    if not os.access(f"/proc/self/fd/{fd}", os.W_OK):
        return "may not be written to (immutable, or not this user's)"
    return None


def stage(pid: int, executables: list[tuple[str, str]]) -> Staged:
    """Stage `executables` ([(host path to read, file name to give it)]) with their loader
    and libraries in a new private directory of pid's root; StagingRefused (nothing left
    behind) when that cannot be done."""
    started = time.monotonic()
    root_fd = open_root(pid)
    try:
        blobs = {source: _read(source) for source, _ in executables}
        sizes = {interp_size(blob) for blob in blobs.values()}
        if None in sizes:
            raise StagingRefused("a statically linked version cannot be staged yet")
        limit = min(room(size) for size in sizes if size is not None)
        staged = _make_directory(root_fd, limit)
    except BaseException:
        os.close(root_fd)
        raise
    try:
        _fill(staged, executables, blobs)
    except BaseException:
        unstage(staged.root_fd, staged.name)
        os.close(root_fd)
        raise
    staged.seconds = time.monotonic() - started
    return staged


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _make_directory(root_fd: int, limit: int) -> Staged:
    """A new directory `/.ek-XXXXXX` (0700, root's) in the root, made with mkdirat."""
    length = limit - len(PREFIX)
    if length < 6:
        raise StagingRefused("its program interpreter path is too short to name a staged loader")
    for _ in range(16):
        name = PREFIX[1:] + "".join(secrets.choice(_ALPHABET) for _ in range(min(length, 8)))
        try:
            os.mkdir(name, 0o700, dir_fd=root_fd)
            return Staged(root_fd, name)
        except FileExistsError:
            continue
        except OSError as error:
            raise StagingRefused(
                f"a directory cannot be made in the root: {error.strerror}"
            ) from None
    raise StagingRefused("no free name for a staging directory in the root")


def _fill(staged: Staged, executables: list[tuple[str, str]], blobs: dict[str, bytes]) -> None:
    """Copy the executables (retargeted), their loader and their libraries into the
    staging directory, then make it read-only."""
    directory = f"/{staged.name}"
    files: dict[str, bytes] = {}
    for source, name in executables:
        try:
            files[name] = retarget(blobs[source], directory)
            loader = _loader_of(source)
            needed = libraries(source, loader)
        except BinaryError as error:
            raise StagingRefused(f"{name} cannot be staged: {error}") from None
        _add(files, LOADER_NAME, _read(loader))
        for library, path in needed.items():
            _add(files, library, _read(path))
        staged.executables[source] = f"{directory}/{name}"
    dir_fd = os.open(staged.name, _DIR_FLAGS, dir_fd=staged.root_fd)
    try:
        info = os.fstat(dir_fd)
        if info.st_uid != os.geteuid() or info.st_mode & 0o777 != 0o700:
            raise StagingRefused("the staging directory was replaced while being filled")
        for name, data in files.items():
            _write(dir_fd, name, data)
            staged.bytes += len(data)
        os.fchmod(dir_fd, 0o555)
    finally:
        os.close(dir_fd)


def _loader_of(path: str) -> str:
    """The loader (PT_INTERP) an executable names, on this host."""
    with ElfBinary(path) as elf:
        loader = elf.interpreter
    if loader is None:
        raise BinaryError("it is statically linked")
    return loader


def _add(files: dict[str, bytes], name: str, data: bytes) -> None:
    """Add a file to stage; two versions needing different files of one name cannot be
    staged together."""
    if files.setdefault(name, data) != data:
        raise StagingRefused(f"the two versions need different files named {name}")


def _write(dir_fd: int, name: str, data: bytes) -> None:
    """Create `name` in dir_fd (never an existing file or a link), 0555, with `data`."""
    fd = os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o500,
        dir_fd=dir_fd,
    )
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        os.fchmod(f.fileno(), 0o555)


def unstage(root_fd: int, name: str) -> None:
    """Remove staging directory `name` from the root open at root_fd, if it is still the
    root-owned directory made for it (a replaced one is left alone)."""
    try:
        dir_fd = os.open(name, _DIR_FLAGS, dir_fd=root_fd)
    except OSError:
        return
    try:
        if os.fstat(dir_fd).st_uid != os.geteuid():
            return
        os.fchmod(dir_fd, 0o700)
        for entry in os.listdir(dir_fd):
            with contextlib.suppress(OSError):
                os.unlink(entry, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    with contextlib.suppress(OSError):
        os.rmdir(name, dir_fd=root_fd)
