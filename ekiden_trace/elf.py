"""Read an ELF binary: identity, load segments, symbols and raw notes."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from .errors import BinaryError


@dataclass(frozen=True)
class Symbol:
    """A named function or object of a binary, at its link-time address."""

    name: str
    addr: int
    size: int
    kind: str  # 'function' or 'object'
    local: bool


@dataclass(frozen=True)
class Note:
    """One ELF note: its owner name, type and description bytes."""

    name: str
    type: int
    desc: bytes


class ElfBinary:
    """An x86-64 ELF file opened for reading; raises BinaryError when unusable."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BinaryError(f"{self.path} does not exist; give the path of a compiled binary.")
        if not self.path.is_file():
            raise BinaryError(f"{self.path} is not a regular file; give the path of a binary.")
        self._file = self.path.open("rb")
        try:
            self.elf = ELFFile(self._file)
        except ELFError:
            self._file.close()
            raise BinaryError(
                f"{self.path} is not an ELF file; give a compiled program, not a script or data."
            ) from None
        if self.elf["e_machine"] != "EM_X86_64":
            machine = self.elf["e_machine"]
            self._file.close()
            raise BinaryError(
                f"{self.path} is built for {machine}; ekiden-trace handles x86-64 programs only."
            )
        if not self._complete():
            self._file.close()
            raise BinaryError(f"{self.path} is truncated or damaged; rebuild or copy it again.")

    def _complete(self) -> bool:
        """Every section and segment lies within the file."""
        size = self.path.stat().st_size
        try:
            extents = [
                (sec["sh_offset"], sec["sh_size"])
                for sec in self.elf.iter_sections()
                if sec["sh_type"] != "SHT_NOBITS"
            ]
            extents += [(seg["p_offset"], seg["p_filesz"]) for seg in self.elf.iter_segments()]
        except ELFError:
            return False
        return all(offset + length <= size for offset, length in extents)

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

    @property
    def is_pie(self) -> bool:
        """True for position-independent executables and shared objects."""
        return self.elf["e_type"] == "ET_DYN"

    @cached_property
    def first_load_vaddr(self) -> int:
        """The page-aligned link-time address of the lowest PT_LOAD segment."""
        loads = [seg["p_vaddr"] - seg["p_offset"] for seg in self.elf.iter_segments("PT_LOAD")]
        return min(loads) if loads else 0

    @property
    def has_symtab(self) -> bool:
        """True when the full symbol table (.symtab) is present (not stripped)."""
        return self.elf.get_section_by_name(".symtab") is not None

    @property
    def has_debug_info(self) -> bool:
        """True when DWARF .debug_info is present."""
        return self.elf.get_section_by_name(".debug_info") is not None

    @cached_property
    def interpreter(self) -> str | None:
        """The program interpreter (ld.so) path, or None for static binaries."""
        for seg in self.elf.iter_segments("PT_INTERP"):
            return seg.get_interp_name()
        return None

    def section_address(self, name: str) -> int | None:
        """The link-time address of a section, or None when absent."""
        section = self.elf.get_section_by_name(name)
        return None if section is None else section["sh_addr"]

    def notes(self) -> list[Note]:
        """All notes of all SHT_NOTE sections, decoded by hand (owner name matters, not type)."""
        found: list[Note] = []
        for section in self.elf.iter_sections("SHT_NOTE"):
            data = section.data()
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
        """Defined function and object symbols, from .symtab or else .dynsym."""
        table = self.elf.get_section_by_name(".symtab") or self.elf.get_section_by_name(".dynsym")
        if not isinstance(table, SymbolTableSection):
            return []
        kinds = {"STT_FUNC": "function", "STT_OBJECT": "object", "STT_TLS": None}
        symbols = []
        for sym in table.iter_symbols():
            kind = kinds.get(sym["st_info"]["type"])
            if kind is None or sym["st_shndx"] == "SHN_UNDEF" or not sym.name:
                continue
            local = sym["st_info"]["bind"] == "STB_LOCAL"
            symbols.append(Symbol(sym.name, sym["st_value"], sym["st_size"], kind, local))
        return symbols

    def readonly_ranges(self) -> list[tuple[int, int]]:
        """Link-time address ranges of loaded, non-writable sections (code and rodata)."""
        ranges = []
        for section in self.elf.iter_sections():
            flags = section["sh_flags"]
            if flags & 0x2 and not flags & 0x1 and section["sh_size"]:  # ALLOC, not WRITE
                ranges.append((section["sh_addr"], section["sh_addr"] + section["sh_size"]))
        return sorted(ranges)
