"""The static model of a marked binary: its marks resolved against its DWARF.

Everything here is computed before any process is touched, and its slow part
(the DWARF index) is cached on disk per build-id.
"""

from __future__ import annotations

import bisect
import os
from collections import Counter
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from ekiden_trace.binary.debuginfo import find_debug_file, missing_debug_info
from ekiden_trace.binary.dwarf.index import DebugIndex, Variable
from ekiden_trace.binary.dwarf.types import byte_size, c_name
from ekiden_trace.binary.elf import ElfBinary, Symbol
from ekiden_trace.binary.hints import Hints
from ekiden_trace.binary.marks import Marks, read_marks
from ekiden_trace.errors import BinaryError


@dataclass(frozen=True)
class UpdatePoint:
    """An update point with where it stands in the source."""

    name: str
    pc: int
    function: str | None
    file: str | None
    line: int | None


@dataclass(frozen=True)
class TaggedVariable:
    """A tagged variable: its DWARF description and its identity across versions."""

    variable: Variable
    c_type: str
    declaration: str
    size: int | None
    in_unit: bool = False  # the key names the compilation unit: the function's is ambiguous

    @property
    def name(self) -> str:
        return self.variable.name

    @property
    def scope(self) -> str:
        return self.variable.scope

    @property
    def key(self) -> str:
        """Identity across versions: `name` for a global, `unit:name` for a file static,
        `function:name` for a function static or local, `unit:function:name` when
        another unit has a function of the same name with the same tagged name."""
        var = self.variable
        if var.scope == "global":
            return var.name
        if var.scope == "file_static":
            return f"{var.cu}:{var.name}"
        if self.in_unit:
            return f"{var.cu}:{var.function}:{var.name}"
        return f"{var.function}:{var.name}"

    def describe_scope(self) -> str:
        """'global', 'file static (kv.c)', 'function static of f', 'local of main'."""
        var = self.variable
        if var.scope == "global":
            return "global"
        if var.scope == "file_static":
            return f"file static of {Path(var.cu).name}"
        if var.scope == "function_static":
            return f"function static of {var.function}"
        return f"{'parameter' if var.scope == 'parameter' else 'local'} of {var.function}"


class SymbolTable:
    """Symbols of one binary sorted by address, for naming code and data addresses."""

    def __init__(self, symbols: list[Symbol]) -> None:
        self._symbols = sorted(symbols, key=lambda s: (s.addr, -s.size))
        self._starts = [s.addr for s in self._symbols]
        self.by_name = {s.name: s for s in self._symbols if not s.local}
        for sym in self._symbols:
            self.by_name.setdefault(sym.name, sym)
        names = Counter(s.name for s in self._symbols)
        self._shared = {name for name, count in names.items() if count > 1}
        for sym in self._symbols:
            if sym.local and sym.unit:
                self.by_name.setdefault(f"{sym.unit}:{sym.name}", sym)

    def name_of(self, sym: Symbol) -> str:
        """The name a symbol is remapped by: `unit.c:name` for a file-local symbol whose
        name other symbols share (two units' `static int counter`), else its name."""
        if sym.local and sym.unit and sym.name in self._shared:
            return f"{sym.unit}:{sym.name}"
        return sym.name

    def containing(self, addr: int) -> Symbol | None:
        """The symbol whose extent holds a link-time address (or starts at it)."""
        i = bisect.bisect_right(self._starts, addr) - 1
        while i >= 0 and self._symbols[i].addr <= addr:
            sym = self._symbols[i]
            if addr < sym.addr + max(sym.size, 1):
                return sym
            if addr - sym.addr > 1 << 20:
                break
            i -= 1
        return None


class Program:
    """A marked binary: its points, tagged variables and hints, resolved through DWARF."""

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        """Read the binary at `path`; `name` is what messages call it (its path by default)."""
        self.elf = ElfBinary(path, name)
        self.path = self.elf.path
        self.name = self.elf.name
        self.marks: Marks = read_marks(self.elf)
        origin = (name or str(path)).removesuffix(" (deleted)")
        lookup = find_debug_file(self.elf, origin)
        if lookup.path is None:
            raise missing_debug_info(self.elf, origin, lookup)
        self.debug_path = lookup.path  # the binary itself, or its separate debug file
        self.index = DebugIndex.load(self.debug_path)
        self.hints = Hints.from_marks(self.marks.hints, self.index)

    @property
    def build_id(self) -> str:
        return self.index.build_id

    @cached_property
    def symbols(self) -> SymbolTable:
        """Its symbols, from its debug file's full table when the binary is stripped."""
        if self.elf.has_symtab or self.debug_path == str(self.path):
            return SymbolTable(self._in_units(self.elf.symbols()))
        with ElfBinary(self.debug_path) as debug:
            return SymbolTable(self._in_units(debug.symbols()))

    def _in_units(self, symbols: list[Symbol]) -> list[Symbol]:
        """The symbols, each local one of a unit whose basename other units share named by
        its unit as the DWARF names it (`a/util.c`), found by its address: the ELF's FILE
        symbols say `util.c` for both `a/util.c` and `b/util.c`."""
        index = self.index
        bases = Counter(os.path.basename(cu) for cu in index.cus)
        shared = {base for base, count in bases.items() if count > 1}
        if not shared:
            return symbols
        statics = {
            var.location["addr"]: var.cu
            for var in index.globals()
            if var.scope != "global" and var.location["kind"] == "addr"
        }

        def unit_of(sym: Symbol) -> str | None:
            if sym.kind == "function":
                function = index.function_at(sym.addr)
                return function.cu if function is not None else None
            return statics.get(sym.addr)

        return [
            replace(sym, unit=unit_of(sym) or sym.unit) if sym.local and sym.unit in shared else sym
            for sym in symbols
        ]

    @cached_property
    def points(self) -> list[UpdatePoint]:
        """Update points, one per name and address, in address order."""
        seen = {}
        for mark in self.marks.points:
            func = self.index.function_at(mark.pc)
            where = self.index.line_at(mark.pc)
            seen[(mark.name, mark.pc)] = UpdatePoint(
                mark.name,
                mark.pc,
                func.name if func else None,
                where[0] if where else None,
                where[1] if where else None,
            )
        return sorted(seen.values(), key=lambda p: p.pc)

    @cached_property
    def point_names(self) -> set[str]:
        return {p.name for p in self.points}

    @cached_property
    def tags(self) -> list[TaggedVariable]:
        """Tagged variables, each once, resolved as C resolves the name at the tag; keys
        name the compilation unit where two units' functions share a name."""
        found: dict[tuple[str, str | None, str, str], TaggedVariable] = {}
        for mark in self.marks.tags:
            var = self.index.resolve(mark.pc, mark.name, mark.file)
            if var is None:
                where = self.index.line_at(mark.pc)
                at = f"{where[0]}:{where[1]}" if where else mark.file
                raise BinaryError(
                    f"the tag of `{mark.name}` at {at} names no variable in {self.name}'s "
                    "debug info; tag a plain variable name and rebuild with -g."
                )
            types = self.index.types
            tagged = TaggedVariable(
                var,
                c_name(types, var.type),
                c_name(types, var.type, var.name),
                byte_size(types, var.type),
            )
            found.setdefault((var.cu, var.function, var.name, var.scope), tagged)
        keys = [t.key for t in found.values()]
        tags = [replace(t, in_unit=keys.count(t.key) > 1) for t in found.values()]
        return sorted(tags, key=lambda t: (t.scope != "global", t.key))
