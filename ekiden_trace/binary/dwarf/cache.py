"""On-disk cache of data derived from binaries, one JSON file per key.

Keys are built from a binary's identity (its GNU build-id, or a hash of its
contents) plus the kind and format version of the cached data, e.g.
``f"{build_id}-dwarf-v{FORMAT}"``.  Files are private to the user (directory
0700, files 0600) and written atomically, so a crash or a concurrent writer
never leaves a half-written entry behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ekiden_trace.binary.elf import ElfBinary
from ekiden_trace.errors import BinaryError

_KEY_RE = re.compile(r"^[A-Za-z0-9._-]+$")


class CacheError(Exception):
    """The cache directory is unusable (wrong owner, bad key)."""


def cache_dir() -> Path:
    """Return the cache directory, creating it with mode 0700 if needed.

    ``$XDG_CACHE_HOME/ekiden-trace`` or ``~/.cache/ekiden-trace``.  Raises
    CacheError if the directory exists but belongs to another user.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "ekiden-trace"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise CacheError(f"cache directory {path} is owned by uid {st.st_uid}, not by us")
    if st.st_mode & 0o077:
        path.chmod(0o700)
    return path


def _entry_path(key: str) -> Path:
    if not _KEY_RE.match(key):
        raise CacheError(f"invalid cache key {key!r}")
    return cache_dir() / f"{key}.json"


def load_or_build(key: str, builder: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Return the cached dict for key, or build it, store it and return it.

    A missing, unreadable or corrupt entry is rebuilt.
    """
    path = _entry_path(key)
    try:
        with path.open("rb") as f:
            data = json.load(f)
        if isinstance(data, dict):
            return data
    except (OSError, ValueError):
        pass
    data = builder()
    store(key, data)
    return data


def store(key: str, data: dict[str, Any]) -> None:
    """Write data as the entry for key, atomically, with mode 0600."""
    import tempfile  # only when an entry is written: a warm run never needs it

    path = _entry_path(key)
    fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, separators=(",", ":")))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def file_key(path: str | os.PathLike[str]) -> str:
    """Identify a binary: its GNU build-id in hex, else the sha256 of its bytes."""
    build_id = read_build_id(path)
    if build_id:
        return build_id
    import hashlib  # only for files without a build-id

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_build_id(path: str | os.PathLike[str]) -> str | None:
    """Return the hex GNU build-id of an x86-64 ELF file, or None if it has none."""
    try:
        with ElfBinary(path) as binary:
            return binary.build_id
    except BinaryError:
        return None
