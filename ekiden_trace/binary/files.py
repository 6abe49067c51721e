"""File identity: whether two paths name one file, and what must not change about a file."""

from __future__ import annotations

import os

StrPath = str | os.PathLike[str]


def file_identity(path: StrPath) -> tuple[int, ...]:
    """Device, inode, size and change times: what must not change between check and use."""
    info = os.stat(path)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def same_file(a: StrPath, b: StrPath) -> bool:
    """True when `a` and `b` name the same file; False when either cannot be reached."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


HELD_PREFIX = "/proc/self/fd/"


def hold(path: StrPath) -> str:
    """Open `path` for the rest of this process's life and return /proc/self/fd/N: a path
    to that very file however `path` changes later (a package upgrade renames a new file
    over it, or deletes it).  A child started with pass_fds=[N] reaches it by the same
    path."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return f"{HELD_PREFIX}{fd}"


def held_descriptor(path: StrPath) -> int | None:
    """N for a path made by `hold`, None for any other path."""
    text = os.fspath(path)
    number = text.removeprefix(HELD_PREFIX)
    return int(number) if number != text and number.isdigit() else None
