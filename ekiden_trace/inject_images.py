"""The ELF images mapped in a live process, as injection needs them.

Function symbols come from each file's .dynsym and .symtab (pyelftools) and
are placed at run time by the image's load bias, found in /proc/PID/maps.
Parsed files are cached by file identity; `syscall` gadgets by build-id.
Lookups return None when nothing fits: the public layer (inject.py) turns
that into an error message.
"""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from capstone.x86 import X86_INS_SYSCALL
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection

from .process import Mapping, read_maps

SYSCALL_BYTES = b"\x0f\x05"
_SCAN_CHUNK = 1 << 20
_VERSYM_HIDDEN = 0x8000
_SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym
_STT_FUNC = 2
_STT_GNU_IFUNC = 10
_STB_LOCAL = 0
_SHN_UNDEF = 0
_DECODER = Cs(CS_ARCH_X86, CS_MODE_64)

Reader = Callable[[int, int], bytes]


@dataclass(frozen=True)
class FunctionSymbol:
    """A defined function of an ELF file, at its link-time address."""

    name: str
    addr: int
    size: int
    ifunc: bool  # a GNU indirect function: addr is its resolver


@dataclass(frozen=True)
class ElfImage:
    """What injection needs from one ELF file."""

    build_id: str | None
    load_delta: int  # p_vaddr - p_offset of the lowest PT_LOAD
    functions: dict[str, FunctionSymbol]


@dataclass(frozen=True)
class MappedImage:
    """An ELF file mapped in a process: its path, load bias and mappings."""

    path: str
    bias: int
    image: ElfImage
    mappings: tuple[Mapping, ...]

    def executable(self, addr: int, size: int = 1) -> bool:
        """True when [addr, addr+size) lies in one executable mapping of this image."""
        return any(
            m.start <= addr and addr + size <= m.end and "x" in m.perms for m in self.mappings
        )


_images: dict[tuple[int, int, int, int], ElfImage | None] = {}
_gadgets: dict[str, int] = {}


def _load_image(path: str) -> ElfImage | None:
    """Parse `path` (cached by device, inode, size and mtime); None when it is not ELF."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key not in _images:
                _images[key] = _parse(f)
            return _images[key]
    except OSError:
        return None


def _parse(f: BinaryIO) -> ElfImage | None:
    try:
        elf = ELFFile(f)
        loads = sorted((seg["p_offset"], seg["p_vaddr"]) for seg in elf.iter_segments("PT_LOAD"))
        if not loads:
            return None
        return ElfImage(_build_id(elf), loads[0][1] - loads[0][0], _functions(elf))
    except (ELFError, ValueError, KeyError):
        return None


def _build_id(elf: ELFFile) -> str | None:
    for section in elf.iter_sections():
        if isinstance(section, NoteSection):
            for note in section.iter_notes():
                # Match the owner too: pyelftools names stapsdt notes (type 3) like build-ids.
                if note["n_name"] == "GNU" and note["n_type"] == "NT_GNU_BUILD_ID":
                    return str(note["n_desc"])
    return None


def _functions(elf: ELFFile) -> dict[str, FunctionSymbol]:
    """Defined functions by name; a global default-version definition wins over others.

    The tables are decoded with struct rather than symbol by symbol through
    pyelftools, which would take a good part of a second for libc.
    """
    best: dict[str, tuple[int, FunctionSymbol]] = {}
    for table_name in (".dynsym", ".symtab"):
        table = elf.get_section_by_name(table_name)
        if table is None or table["sh_entsize"] != _SYM.size:
            continue
        names = elf.get_section(table["sh_link"]).data()
        versions = array("H")
        versym = elf.get_section_by_name(".gnu.version") if table_name == ".dynsym" else None
        if versym is not None:
            versions.frombytes(versym.data())
        for index, (name_at, info, _, shndx, value, size) in enumerate(
            _SYM.iter_unpack(table.data())
        ):
            kind = info & 0xF
            if kind not in (_STT_FUNC, _STT_GNU_IFUNC) or shndx == _SHN_UNDEF or not value:
                continue
            name = names[name_at : names.index(b"\0", name_at)].decode("utf-8", "replace")
            if not name:
                continue
            hidden = index < len(versions) and versions[index] & _VERSYM_HIDDEN
            rank = (2 if info >> 4 == _STB_LOCAL else 0) + (1 if hidden else 0)
            if name not in best or rank < best[name][0]:
                best[name] = (rank, FunctionSymbol(name, value, size, kind == _STT_GNU_IFUNC))
    return {name: found for name, (_, found) in best.items()}


def mapped_images(pid: int) -> list[MappedImage]:
    """The ELF files mapped in `pid`: the executable first, then in address order."""
    by_path: dict[str, list[Mapping]] = {}
    for mapping in read_maps(pid):
        if mapping.path.startswith("/"):
            by_path.setdefault(mapping.path, []).append(mapping)
    exe = os.readlink(f"/proc/{pid}/exe")
    images = []
    for path, mappings in sorted(by_path.items(), key=lambda item: item[0] != exe):
        first = min(mappings, key=lambda m: m.start)
        # map_files opens the very file mapped, even when deleted or outside our root.
        image = _load_image(f"/proc/{pid}/map_files/{first.start:x}-{first.end:x}")
        if image is None:
            image = _load_image(path)
        if image is not None:
            bias = first.start - first.offset - image.load_delta
            images.append(MappedImage(path, bias, image, tuple(mappings)))
    return images


def matches_library(path: str, library: str) -> bool:
    """True when `library` names this file: its full path or its basename."""
    return library in (path, os.path.basename(path))


def decodes_as_syscall(code: bytes, addr: int) -> bool:
    """True when the first instruction of `code` (placed at `addr`) is `syscall`."""
    insn = next(_DECODER.disasm(code[:15], addr, 1), None)
    return insn is not None and insn.id == X86_INS_SYSCALL


def syscall_in_code(code: bytes, start: int) -> int | None:
    """The first `syscall` found by decoding `code` from `start`, an instruction boundary."""
    if SYSCALL_BYTES not in code:
        return None
    for insn in _DECODER.disasm(code, start):
        if insn.id == X86_INS_SYSCALL:
            return insn.address
    return None


def _gadget_candidates(image: ElfImage) -> Iterator[FunctionSymbol]:
    """glibc's syscall(2) wrapper first, then the other functions in address order."""
    preferred = image.functions.get("syscall")
    if preferred is not None:
        yield preferred
    for function in sorted(image.functions.values(), key=lambda f: f.addr):
        if function is not preferred and not function.ifunc and function.size:
            yield function


def image_gadget(read: Reader, mapped: MappedImage) -> int | None:
    """A `syscall` at an instruction boundary of a function of `mapped`, or None.

    Functions are decoded one at a time from their symbol, so the search stops
    at the first hit instead of decoding the whole library; the hit's
    link-time address is cached per build-id.
    """
    key = mapped.image.build_id
    if key is not None and key in _gadgets:
        addr = mapped.bias + _gadgets[key]
        if mapped.executable(addr, 2) and decodes_as_syscall(read_or_empty(read, addr, 2), addr):
            return addr
    for function in _gadget_candidates(mapped.image):
        start = mapped.bias + function.addr
        if not mapped.executable(start, function.size):
            continue
        hit = syscall_in_code(read_or_empty(read, start, function.size), start)
        if hit is not None:
            if key is not None:
                _gadgets[key] = hit - mapped.bias
            return hit
    return None


def scan_gadget(read: Reader, mappings: list[Mapping]) -> int | None:
    """A `0f 05` in executable memory without symbols, accepted when it decodes as
    `syscall` followed by a few valid instructions (boundaries cannot be proven here)."""
    for mapping in mappings:
        if "x" not in mapping.perms or "r" not in mapping.perms:
            continue
        for chunk_start in range(mapping.start, mapping.end, _SCAN_CHUNK):
            size = min(_SCAN_CHUNK, mapping.end - chunk_start)
            code = read_or_empty(read, chunk_start, size)
            at = code.find(SYSCALL_BYTES)
            while at >= 0:
                decoded = list(_DECODER.disasm(code[at : at + 32], chunk_start + at, 4))
                if len(decoded) == 4 and decoded[0].id == X86_INS_SYSCALL:
                    return chunk_start + at
                at = code.find(SYSCALL_BYTES, at + 1)
    return None


def read_or_empty(read: Reader, addr: int, size: int) -> bytes:
    """The bytes at addr, or b"" when they cannot be read."""
    try:
        return read(addr, size)
    except OSError:
        return b""
