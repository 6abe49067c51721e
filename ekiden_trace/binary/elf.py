"""Read an ELF binary: identity, load segments, symbols and raw notes.

The headers, notes and symbols are decoded with struct: a command that only
plans an update reads a few of them from two binaries, and pyelftools' generic
parser (and its import) would cost more than the rest of the plan.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, NamedTuple

from ekiden_trace.errors import BinaryError

_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
"""An Elf64_Ehdr, with the fields of _Header."""
_SECTION = struct.Struct("<IIQQQQIIQQ")
"""An Elf64_Shdr: sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link,
sh_info, sh_addralign, sh_entsize."""
_SEGMENT = struct.Struct("<IIQQQQQQ")
"""An Elf64_Phdr: p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align."""
_SYMBOL = struct.Struct("<IBBHQQ")
"""An Elf64_Sym: st_name, st_info, st_other, st_shndx, st_value, st_size."""
_SYMBOL_KINDS = {1: "object", 2: "function"}  # by STT_* type; others (TLS, ...) are skipped
_MACHINES = {3: "i386", 8: "MIPS", 20: "PowerPC", 21: "PowerPC 64", 22: "S/390", 40: "ARM"}
_MACHINES |= {62: "x86-64", 183: "AArch64", 243: "RISC-V"}
EM_X86_64 = 62
SHT_SYMTAB, SHT_NOTE, SHT_NOBITS, SHT_DYNSYM = 2, 7, 8, 11
PT_LOAD, PT_INTERP = 1, 3
PF_X = 0x1
STT_OBJECT, STT_FUNC, STT_FILE, STT_GNU_IFUNC = 1, 2, 4, 10
SHN_UNDEF, SHN_XINDEX = 0, 0xFFFF
STB_LOCAL = 0


@dataclass(frozen=True)
class Symbol:
    """A named function or object of a binary, at its link-time address."""

    name: str
    addr: int
    size: int
    kind: str  # 'function' or 'object'
    local: bool
    unit: str | None = None  # a local symbol's source file, from the FILE symbol before it


class SymbolEntry(NamedTuple):
    """A defined, named entry of a symbol table, as the table has it."""

    index: int  # its position in the table (what .gnu.version is indexed by)
    name: str
    addr: int
    size: int
    type: int  # STT_*
    local: bool


@dataclass(frozen=True)
class Note:
    """One ELF note: its owner name, type and description bytes."""

    name: str
    type: int
    desc: bytes


class _Header(NamedTuple):
    """An ELF header (Elf64_Ehdr), field by field."""

    ident: bytes
    type: int
    machine: int
    version: int
    entry: int
    phoff: int
    shoff: int
    flags: int
    ehsize: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int


@dataclass(frozen=True)
class _Section:
    """What a section header says (the fields used here)."""

    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int


@dataclass(frozen=True)
class _Segment:
    """What a program header says (the fields used here)."""

    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int


def _c_string(blob: bytes, start: int) -> str:
    """The NUL-terminated string at start of blob (a string table), as UTF-8."""
    end = blob.find(b"\0", start)
    return blob[start : end if end >= 0 else None].decode("utf-8", "replace")


class ElfBinary:
    """An x86-64 ELF file opened for reading; raises BinaryError when unusable."""

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or str(self.path)  # what messages call it (path may be /proc/self/fd/N)
        if not self.path.exists():
            raise BinaryError(f"{self.name} does not exist; give the path of a compiled binary.")
        if not self.path.is_file():
            raise BinaryError(f"{self.name} is not a regular file; give the path of a binary.")
        self._file: BinaryIO = self.path.open("rb")
        self._size = self.path.stat().st_size
        try:
            self._read_headers()
        except BinaryError:
            self._file.close()
            raise

    def __enter__(self) -> ElfBinary:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _read_headers(self) -> None:
        """Check the ELF header and read the section and program headers."""
        raw = self._file.read(_HEADER.size)
        if len(raw) < _HEADER.size or raw[:4] != b"\x7fELF":
            raise BinaryError(
                f"{self.name} is not an ELF file; give a compiled program, not a script or data."
            )
        header = _Header._make(_HEADER.unpack(raw))
        bits = 64 if header.ident[4] == 2 else 32
        if header.machine != EM_X86_64 or bits != 64 or header.ident[5] != 1:  # x32: 32-bit
            name = _MACHINES.get(header.machine, f"machine {header.machine}")
            raise BinaryError(
                f"{self.name} is built for {name} ({bits}-bit); ekiden-trace handles "
                "64-bit x86-64 programs only."
            )
        if (header.phnum and header.phentsize != _SEGMENT.size) or (
            header.shoff and header.shentsize != _SECTION.size
        ):
            raise self._damaged()
        self.entry = header.entry
        self._sections = self._read_sections(header.shoff, header.shnum, header.shstrndx)
        self._by_name = {section.name: section for section in self._sections}
        table = self._read(header.phoff, header.phnum * _SEGMENT.size)
        self._segments = [
            _Segment(row[0], row[1], row[2], row[3], row[5]) for row in _SEGMENT.iter_unpack(table)
        ]
        if not self._complete():
            raise self._damaged()

    def _read_sections(self, offset: int, count: int, names_index: int) -> list[_Section]:
        """The section headers, named; a count of 0 or a names index of SHN_XINDEX
        means the real value is in section 0's header (more than 65,279 sections)."""
        if not offset:
            return []
        first = _SECTION.unpack(self._read(offset, _SECTION.size))
        count = count or first[5]
        names_index = first[6] if names_index == SHN_XINDEX else names_index
        rows = list(_SECTION.iter_unpack(self._read(offset, count * _SECTION.size)))
        if names_index >= len(rows):
            raise self._damaged()
        names = self._read(rows[names_index][4], rows[names_index][5])
        return [
            _Section(_c_string(names, name), kind, flags, addr, at, size, link)
            for name, kind, flags, addr, at, size, link, *_ in rows
        ]

    def _read(self, offset: int, size: int) -> bytes:
        """size bytes of the file at offset; BinaryError when the file ends before."""
        if offset + size > self._size:
            raise self._damaged()
        self._file.seek(offset)
        return self._file.read(size)

    def _damaged(self) -> BinaryError:
        return BinaryError(f"{self.name} is truncated or damaged; rebuild or copy it again.")

    def _complete(self) -> bool:
        """Every section and segment lies within the file."""
        extents = [(s.offset, s.size) for s in self._sections if s.type != SHT_NOBITS]
        extents += [(seg.offset, seg.filesz) for seg in self._segments]
        return all(offset + length <= self._size for offset, length in extents)

    def close(self) -> None:
        """Close the underlying file."""
        self._file.close()

    @cached_property
    def build_id(self) -> str | None:
        """The GNU build-id in hex, or None."""
        for note in self.notes():
            if note.name == "GNU" and note.type == 3:
                return note.desc.hex()
        return None

    @cached_property
    def first_load_vaddr(self) -> int:
        """The page-aligned link-time address of the lowest PT_LOAD segment."""
        loads = [seg.vaddr - seg.offset for seg in self._segments if seg.type == PT_LOAD]
        return min(loads) if loads else 0

    @property
    def code_segments(self) -> list[tuple[int, int, int]]:
        """(p_vaddr, p_offset, p_filesz) of the executable PT_LOAD segments."""
        return [
            (seg.vaddr, seg.offset, seg.filesz)
            for seg in self._segments
            if seg.type == PT_LOAD and seg.flags & PF_X
        ]

    @property
    def has_symtab(self) -> bool:
        """True when the full symbol table (.symtab) is present (not stripped)."""
        return ".symtab" in self._by_name

    @property
    def has_debug_info(self) -> bool:
        """True when DWARF .debug_info is present."""
        return ".debug_info" in self._by_name

    @cached_property
    def interpreter(self) -> str | None:
        """The program interpreter (ld.so) path, or None for static binaries."""
        for seg in self._segments:
            if seg.type == PT_INTERP:
                return _c_string(self._read(seg.offset, seg.filesz), 0)
        return None

    def section_data(self, name: str) -> bytes | None:
        """The bytes of a section, or None when absent or without bytes in the file."""
        section = self._by_name.get(name)
        if section is None or section.type == SHT_NOBITS:
            return None
        return self._read(section.offset, section.size)

    def section_address(self, name: str) -> int | None:
        """The link-time address of a section, or None when absent."""
        section = self._by_name.get(name)
        return None if section is None else section.addr

    def notes(self) -> list[Note]:
        """All notes of all SHT_NOTE sections, decoded by hand (owner name matters, not type)."""
        found: list[Note] = []
        for section in self._sections:
            if section.type != SHT_NOTE:
                continue
            data = self._read(section.offset, section.size)
            pos = 0
            while pos + 12 <= len(data):
                namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
                pos += 12
                name = data[pos : pos + namesz].rstrip(b"\0").decode("latin-1")
                pos += (namesz + 3) & ~3
                desc = data[pos : pos + descsz]
                pos += (descsz + 3) & ~3
                found.append(Note(name, ntype, desc))
        return found

    def symbols(self) -> list[Symbol]:
        """Defined function and object symbols, from .symtab or else .dynsym.  A FILE
        symbol starts the local symbols of its unit (an unnamed one ends them)."""
        table = ".symtab" if self.has_symtab else ".dynsym"
        found, unit = [], None
        for entry in self.symbol_entries(table):
            if entry.type == STT_FILE:
                unit = entry.name or None
            elif entry.type in _SYMBOL_KINDS:
                kind = _SYMBOL_KINDS[entry.type]
                local_unit = unit if entry.local else None
                found.append(
                    Symbol(entry.name, entry.addr, entry.size, kind, entry.local, local_unit)
                )
        return found

    def symbol_entries(self, table_name: str) -> Iterator[SymbolEntry]:
        """The defined, named entries of one symbol table (.symtab or .dynsym), if present."""
        table = self._by_name.get(table_name)
        if table is None or table.type not in (SHT_SYMTAB, SHT_DYNSYM):
            return
        if table.link >= len(self._sections):
            raise self._damaged()
        strings = self._sections[table.link]
        names = self._read(strings.offset, strings.size)
        data = self._read(table.offset, table.size - table.size % _SYMBOL.size)
        for index, (name_at, info, _, shndx, value, size) in enumerate(_SYMBOL.iter_unpack(data)):
            if shndx == SHN_UNDEF:
                continue
            name = _c_string(names, name_at)
            if name or info & 0xF == STT_FILE:  # an unnamed FILE symbol ends a unit's locals
                yield SymbolEntry(index, name, value, size, info & 0xF, info >> 4 == STB_LOCAL)

    def symbol_versions(self) -> array:
        """.gnu.version: the version index of each .dynsym entry (empty when absent)."""
        versions = array("H")
        section = self._by_name.get(".gnu.version")
        if section is not None:
            versions.frombytes(self._read(section.offset, section.size - section.size % 2))
        return versions
