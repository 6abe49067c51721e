"""Where a binary's debug info is: in the binary, or in a separate file found the way gdb,
drgn and elfutils look for one.

In order: the binary itself; this tool's own cache (a copy of every separate debug file
found before, by build-id, so a server's debug info outlives the upgrade of its debug
package); `DIR/.build-id/NN/REST.debug` for each debug directory DIR; the file its
`.gnu_debuglink` names, next to the binary, in its `.debug/`, and under each DIR plus the
binary's directory; then each debuginfod server of DEBUGINFOD_URLS
(`URL/buildid/ID/debuginfo`).  A file found by build-id must carry that build-id, one
found by debuglink the CRC the link records.  Debug directories are
EKIDEN_DEBUG_DIRS (colon-separated), /usr/lib/debug by default.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ekiden_trace.binary.dwarf.cache import cache_dir
from ekiden_trace.binary.elf import ElfBinary
from ekiden_trace.errors import BinaryError

DEBUG_DIRS_ENV = "EKIDEN_DEBUG_DIRS"
DEFAULT_DEBUG_DIRS = "/usr/lib/debug"
DEBUGINFOD_TIMEOUT = 30.0  # seconds per server, unless DEBUGINFOD_TIMEOUT says otherwise
_CHUNK = 1 << 20


@dataclass
class Lookup:
    """The outcome of a search: the file with the debug info (or None) and where it looked."""

    path: str | None = None
    searched: list[str] = field(default_factory=list)


def debug_dirs() -> list[str]:
    """The debug directories, from EKIDEN_DEBUG_DIRS or the default."""
    value = os.environ.get(DEBUG_DIRS_ENV) or DEFAULT_DEBUG_DIRS
    return [d for d in value.split(":") if d]


def debuglink(elf: ElfBinary) -> tuple[str, int] | None:
    """The file name and CRC32 that .gnu_debuglink records, or None."""
    data = elf.section_data(".gnu_debuglink")
    if not data or b"\0" not in data:
        return None
    name, _, rest = data.partition(b"\0")
    crc_at = (len(name) + 4) & ~3  # the name, its NUL, padding to 4 bytes
    if len(data) < crc_at + 4 or not rest:
        return None
    (crc,) = struct.unpack_from("<I", data, crc_at)
    return os.fsdecode(name), crc


def file_crc(path: str) -> int:
    """The CRC32 of a whole file, as .gnu_debuglink computes it."""
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def _debug_build_id(path: str) -> str | None:
    """The build-id of a debug file that has DWARF, or None when it is not one."""
    try:
        with ElfBinary(path) as debug:
            return debug.build_id if debug.has_debug_info else None
    except (OSError, BinaryError):
        return None


def find_debug_file(elf: ElfBinary, origin: str) -> Lookup:
    """Where the DWARF of `elf` is; `origin` is the path the binary was installed at (its
    directory is where .gnu_debuglink files are looked for)."""
    if elf.has_debug_info:
        return Lookup(str(elf.path))
    lookup = Lookup()
    build_id = elf.build_id

    def accept(path: str, crc: int | None = None) -> bool:
        lookup.searched.append(path)
        if not os.path.isfile(path):
            return False
        found_id = _debug_build_id(path)
        if found_id is None or (build_id and found_id != build_id):
            return False
        if crc is not None and file_crc(path) != crc:
            return False
        lookup.path = path
        return True

    cached = _cached(build_id) if build_id else None
    if cached is not None and accept(str(cached)):
        return lookup
    if build_id:
        for directory in debug_dirs():
            if accept(f"{directory}/.build-id/{build_id[:2]}/{build_id[2:]}.debug"):
                return _keep(lookup, build_id)
    link = debuglink(elf)
    if link is not None:
        name, crc = link
        here = os.path.dirname(os.path.abspath(origin))
        places = [f"{here}/{name}", f"{here}/.debug/{name}"]
        places += [f"{directory}{here}/{name}" for directory in debug_dirs()]
        for place in places:
            if os.path.abspath(place) != os.path.abspath(elf.path) and accept(place, crc):
                return _keep(lookup, build_id)
    if build_id:
        for url in os.environ.get("DEBUGINFOD_URLS", "").split():
            if _fetch(url, build_id, lookup):
                if accept(str(_cached_path(build_id))):
                    return lookup
                _cached_path(build_id).unlink(missing_ok=True)  # not the file asked for
    return lookup


def missing_debug_info(elf: ElfBinary, origin: str, lookup: Lookup) -> BinaryError:
    """The error for a binary whose debug info is nowhere: where it was looked for, and
    the package a Debian user would install."""
    places = ", ".join(lookup.searched) or "nowhere (the binary has no build-id or debuglink)"
    servers = "" if os.environ.get("DEBUGINFOD_URLS") else " (DEBUGINFOD_URLS is not set)"
    what = "is stripped" if not elf.has_symtab else "has no DWARF debug info"
    return BinaryError(
        f"{elf.name} {what} and no debug file was found for it (build-id "
        f"{elf.build_id or 'none'}); looked in: {places}; and on debuginfod servers{servers}. "
        f"Install its debug package (on Debian: {_debian_package(origin)}-dbgsym), set "
        "DEBUGINFOD_URLS, or build with -g and run the unstripped binary."
    )


def _debian_package(origin: str) -> str:
    """The Debian package that installed `origin` (as dpkg knows it), else its file name."""
    path = origin.removesuffix(" (deleted)")
    if shutil.which("dpkg-query"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found = subprocess.run(
                ["dpkg-query", "-S", path], capture_output=True, text=True, timeout=10
            )
            if found.returncode == 0 and ":" in found.stdout:
                return found.stdout.split(":", 1)[0].split(",")[0].strip()
    return os.path.basename(path)


# -- the cache of debug files -------------------------------------------------------


def _cached_path(build_id: str) -> Path:
    return cache_dir() / "debug" / f"{build_id}.debug"


def _cached(build_id: str) -> Path | None:
    path = _cached_path(build_id)
    return path if path.exists() else None


def _keep(lookup: Lookup, build_id: str | None) -> Lookup:
    """Copy the debug file found into the cache (0600), so that it is still there when
    its package is upgraded while the binary it describes still runs."""
    if build_id and lookup.path is not None:
        with contextlib.suppress(OSError), open(lookup.path, "rb") as source:
            _store(build_id, source)
    return lookup


def _store(build_id: str, source: object) -> None:
    """Write the bytes of the binary stream `source` as the cached debug file, atomically."""
    target = _cached_path(build_id)
    target.parent.mkdir(mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{build_id}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, _CHUNK)  # type: ignore[arg-type]
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fetch(url: str, build_id: str, lookup: Lookup) -> bool:
    """Download a debug file from one debuginfod server into the cache; True on success."""
    address = f"{url.rstrip('/')}/buildid/{build_id}/debuginfo"
    lookup.searched.append(address)
    timeout = float(os.environ.get("DEBUGINFOD_TIMEOUT") or DEBUGINFOD_TIMEOUT)
    try:
        with urllib.request.urlopen(address, timeout=timeout) as response:
            _store(build_id, response)
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return True
