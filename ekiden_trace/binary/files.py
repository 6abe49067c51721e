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
