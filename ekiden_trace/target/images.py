"""The ELF images mapped in a live process, as injection and naming need them.

Function symbols come from each file's .dynsym and .symtab and are placed at
run time by the image's load bias, found from its mappings; the same parse
gives the symbol table that names addresses (address_space.py).  The main
program's bias also comes from the auxiliary vector (`load_bias`).
Parsed files are cached by file identity; `syscall` gadgets by build-id.
Lookups return None when nothing fits: the public layer (inject.py) turns
that into an error message.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from capstone.x86 import X86_INS_SYSCALL

from ekiden_trace.binary.elf import STT_FUNC, STT_GNU_IFUNC, ElfBinary, Symbol
from ekiden_trace.binary.files import StrPath, file_identity, same_file
from ekiden_trace.errors import BinaryError
from ekiden_trace.target import procfs
from ekiden_trace.target.procfs import Mapping

SYSCALL_BYTES = b"\x0f\x05"
AT_ENTRY = 9  # the auxiliary vector's entry point of the program
_SCAN_CHUNK = 1 << 20
_VERSYM_HIDDEN = 0x8000
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
    """What injection and naming need from one ELF file."""

    build_id: str | None
    load_delta: int  # p_vaddr - p_offset of the lowest PT_LOAD
    entry: int  # e_entry
    functions: dict[str, FunctionSymbol]
    symbols: list[Symbol]  # functions and objects of .symtab, or else .dynsym, for naming
    code: tuple[tuple[int, int, int], ...]  # (p_vaddr, p_offset, p_filesz) of executable PT_LOADs


@dataclass(frozen=True)
class MappedImage:
    """An ELF file mapped in a process: its path as /proc/PID/maps shows it, a path that
    opens the very file mapped (even deleted), its load bias and mappings."""

    path: str
    file: str
    bias: int
    image: ElfImage
    mappings: tuple[Mapping, ...]

    def executable(self, addr: int, size: int = 1) -> bool:
        """True when [addr, addr+size) lies in one executable mapping of this image."""
        return any(
            m.start <= addr and addr + size <= m.end and "x" in m.perms for m in self.mappings
        )


_images: dict[tuple[int, ...], ElfImage | None] = {}
_gadgets: dict[str, int] = {}
_file_gadgets: dict[tuple[str, str, str], tuple[int, bytes] | None] = {}


def load_image(path: str) -> ElfImage | None:
    """Read `path` (cached by file identity); None when it is not an x86-64 ELF file."""
    try:
        key = file_identity(path)
        if key not in _images:
            with ElfBinary(path) as elf:
                functions = _functions(elf)
                _images[key] = ElfImage(
                    elf.build_id,
                    elf.first_load_vaddr,
                    elf.entry,
                    functions,
                    elf.symbols(),
                    tuple(elf.code_segments),
                )
        return _images[key]
    except (OSError, BinaryError):
        return None


def _functions(elf: ElfBinary) -> dict[str, FunctionSymbol]:
    """Defined functions of .dynsym and .symtab by name; a global default-version
    definition wins over a hidden version or a local one."""
    best: dict[str, tuple[int, FunctionSymbol]] = {}
    for table in (".dynsym", ".symtab"):
        versions = elf.symbol_versions() if table == ".dynsym" else array("H")
        for entry in elf.symbol_entries(table):
            if entry.type not in (STT_FUNC, STT_GNU_IFUNC) or not entry.addr:
                continue
            hidden = entry.index < len(versions) and versions[entry.index] & _VERSYM_HIDDEN
            rank = (2 if entry.local else 0) + (1 if hidden else 0)
            if entry.name not in best or rank < best[entry.name][0]:
                ifunc = entry.type == STT_GNU_IFUNC
                found = FunctionSymbol(entry.name, entry.addr, entry.size, ifunc)
                best[entry.name] = (rank, found)
    return {name: found for name, (_, found) in best.items()}


def mapped_images(pid: int, maps: list[Mapping] | None = None) -> list[MappedImage]:
    """The ELF files mapped in `pid` (whose mappings are `maps`, when already read):
    the executable first, then in address order."""
    by_path: dict[str, list[Mapping]] = {}
    for mapping in procfs.maps(pid) if maps is None else maps:
        if mapping.path.startswith("/"):
            by_path.setdefault(mapping.path, []).append(mapping)
    exe = procfs.exe_link(pid)
    images = []
    for path, mappings in sorted(by_path.items(), key=lambda item: item[0] != exe):
        first = min(mappings, key=lambda m: m.start)
        # map_files opens the very file mapped, even when deleted or outside our root.
        file = procfs.map_file_path(pid, first.start, first.end)
        image = load_image(file)
        if image is None:
            file = path
            image = load_image(path)
        if image is not None:
            bias = first.start - first.offset - image.load_delta
            images.append(MappedImage(path, file, bias, image, tuple(mappings)))
    return images


def load_bias(pid: int, path: StrPath) -> int | None:
    """Load bias of the program `pid` runs, when that is the file `path`: where the kernel
    placed its entry point (AT_ENTRY) minus the entry point the file names (cheap, and
    right after an exec too).  None when the process runs another file (or `path` is not
    an x86-64 ELF file).  A copy of `path` staged for a chrooted process counts as `path`:
    the same build, at the same addresses."""
    exe = procfs.exe_path(pid)
    image = load_image(str(path)) if same_file(exe, path) or same_build(exe, path) else None
    if image is None:
        return None
    return procfs.auxv(pid)[AT_ENTRY] - image.entry


def same_build(a: StrPath, b: StrPath) -> bool:
    """True when the ELF files `a` and `b` carry the same build-id."""
    try:
        with ElfBinary(a) as first, ElfBinary(b) as second:
            return first.build_id is not None and first.build_id == second.build_id
    except (BinaryError, OSError):
        return False


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


def file_gadget(path: str, function: str, symbols: str | None = None) -> tuple[int, bytes] | None:
    """The first `syscall` of `function` in the file `path`, decoded from the file (no process
    needed): (the function's link-time address, its code up to and including the syscall).
    `symbols` is the file whose symbol table names the function, when not `path` itself (a
    stripped binary's debug file).  Cached by paths; whoever uses it checks first that the
    code in the process is this code."""
    key = (path, function, symbols or path)
    if key not in _file_gadgets:
        _file_gadgets[key] = _decode_file_gadget(*key)
    return _file_gadgets[key]


def _decode_file_gadget(path: str, function: str, symbols: str) -> tuple[int, bytes] | None:
    image, named = load_image(path), load_image(symbols)
    symbol = named.functions.get(function) if named is not None else None
    if image is None or symbol is None or symbol.ifunc:
        return None
    for vaddr, offset, size in image.code:
        if vaddr <= symbol.addr and symbol.addr + symbol.size <= vaddr + size:
            with open(path, "rb") as f:
                f.seek(offset + symbol.addr - vaddr)
                code = f.read(symbol.size)
            hit = syscall_in_code(code, symbol.addr)
            if hit is None:
                return None
            return symbol.addr, code[: hit - symbol.addr + len(SYSCALL_BYTES)]
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
