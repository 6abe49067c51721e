"""A copy of a dynamically linked executable that loads from one directory of its own.

For a chrooted process, the new version, its loader and its libraries are staged in a
private directory D inside the process's root.  The copy staged there is the binary with
two changes, both inside its existing bytes (no segment moves, so every address, the
entry point and the build-id stay): its PT_INTERP names the staged loader `D/ld`, and its
DT_DEBUG entry becomes DT_RPATH `D`, so the loader looks for the libraries in D.  The
string `D` is written in PT_INTERP's spare bytes, after the loader's path (the segment is
mapped with the rest of the headers; the kernel reads only up to the first NUL).  `$ORIGIN`
cannot serve instead: the loader finds the program's directory through /proc/self/exe,
which a chroot usually lacks (measured: the whole search path is then dropped).  So D is
written twice in PT_INTERP's 28 bytes, and its name is short.
"""

from __future__ import annotations

import re
import struct
import subprocess

from ekiden_trace.binary.files import held_descriptor
from ekiden_trace.errors import BinaryError

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_STRTAB, DT_RPATH, DT_RUNPATH, DT_DEBUG = 0, 5, 15, 29, 21
LOADER_NAME = "ld"
_PHDR = struct.Struct("<IIQQQQQQ")
_DYN = struct.Struct("<qQ")
_LISTED = re.compile(r"^\s*(\S+) => (/\S+) \(0x[0-9a-f]+\)$")


def room(interp_size: int) -> int:
    """The longest staging directory path D whose copy fits a PT_INTERP of `interp_size`
    bytes: the loader's path `D/ld` and its NUL, then `D` and its NUL."""
    return (interp_size - len(f"/{LOADER_NAME}\0") - 1) // 2


def interp_size(data: bytes) -> int | None:
    """The size of the executable's PT_INTERP segment, None for a static one."""
    found = _segment(data, PT_INTERP)
    return None if found is None else found[2]


def retarget(data: bytes, directory: str) -> bytes:
    """The executable `data`, loading its loader and libraries from `directory` (an
    absolute path as the process will see it); BinaryError when it has no room for that."""
    interp, dynamic = _segment(data, PT_INTERP), _segment(data, PT_DYNAMIC)
    if interp is None or dynamic is None:
        raise BinaryError("a statically linked program needs no loader to be staged")
    offset, vaddr, size = interp
    path = f"{directory}/{LOADER_NAME}".encode() + b"\0"
    if len(directory) > room(size) or not _mapped(data, vaddr, size):
        raise BinaryError(
            f"its program interpreter field ({size} bytes) has no room for {directory}"
        )
    copy = bytearray(data)
    copy[offset : offset + size] = (path + directory.encode() + b"\0").ljust(size, b"\0")
    entries = list(_DYN.iter_unpack(data[dynamic[0] : dynamic[0] + dynamic[2]]))
    tags = [tag for tag, _ in entries]
    if DT_RPATH in tags or DT_RUNPATH in tags or DT_DEBUG not in tags:
        raise BinaryError("it has its own library search path, or no DT_DEBUG entry to reuse")
    strtab = dict(entries)[DT_STRTAB]
    rpath = (vaddr + len(path) - strtab) % (1 << 64)  # an offset from its string table
    at = dynamic[0] + tags.index(DT_DEBUG) * _DYN.size
    copy[at : at + _DYN.size] = _DYN.pack(DT_RPATH, rpath)
    return bytes(copy)


def libraries(binary: str, loader: str) -> dict[str, str]:
    """The libraries `binary` loads, as {name it asks for: file on this host}, resolved by
    the loader it names (`loader --list`, what ldd runs; the program itself does not run).
    A file held open by the tool (binary.files.hold) is passed to the loader under its fd."""
    try:
        listed = subprocess.run(
            [loader, "--list", binary],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            pass_fds=[fd for fd in (held_descriptor(binary),) if fd is not None],
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise BinaryError(f"{loader} could not list the libraries of {binary}: {error}") from None
    found = {}
    for line in listed.splitlines():
        match = _LISTED.match(line)
        if match:
            found[match[1]] = match[2]
        elif "not found" in line:
            raise BinaryError(f"{binary} needs a library this host lacks: {line.strip()}")
    return found


def _segment(data: bytes, kind: int) -> tuple[int, int, int] | None:
    """(file offset, vaddr, file size) of the first program header of `kind`."""
    phoff, phnum = struct.unpack_from("<Q", data, 0x20)[0], struct.unpack_from("<H", data, 0x38)[0]
    for index in range(phnum):
        row = _PHDR.unpack_from(data, phoff + index * _PHDR.size)
        if row[0] == kind:
            return row[2], row[3], row[5]
    return None


def _mapped(data: bytes, vaddr: int, size: int) -> bool:
    """True when [vaddr, vaddr+size) lies in a PT_LOAD segment's file bytes."""
    phoff, phnum = struct.unpack_from("<Q", data, 0x20)[0], struct.unpack_from("<H", data, 0x38)[0]
    for index in range(phnum):
        kind, _, _, start, _, filesz, _, _ = _PHDR.unpack_from(data, phoff + index * _PHDR.size)
        if kind == PT_LOAD and start <= vaddr and vaddr + size <= start + filesz:
            return True
    return False
