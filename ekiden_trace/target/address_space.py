"""A traced process seen through its program: load bias, address regions, frames."""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from pathlib import Path

from ekiden_trace.binary.dwarf.cache import file_key, load_or_build
from ekiden_trace.binary.dwarf.cfi import CallFrameTable, CfaRule
from ekiden_trace.binary.dwarf.expr import regs_to_dwarf
from ekiden_trace.binary.files import same_file
from ekiden_trace.binary.program import Program, SymbolTable
from ekiden_trace.errors import TargetError
from ekiden_trace.target import procfs
from ekiden_trace.target.images import load_bias, mapped_images
from ekiden_trace.target.procfs import Mapping
from ekiden_trace.target.tracee import Tracee
from ekiden_trace.target.unwind import Frames, ModuleMap, unwind

CFI_FORMAT = 1
STACK_UNKNOWN = 8 << 20  # bounds the unwind of a stack pointer outside any mapping


@dataclass(frozen=True)
class Module:
    """A mapped ELF file: its runtime extent, load bias and symbols."""

    path: str  # as /proc/PID/maps shows it
    file: str  # a path that opens the very file mapped
    start: int
    end: int
    bias: int
    symbols: SymbolTable


_tables: dict[str, CallFrameTable] = {}


def _call_frame_table(path: str) -> CallFrameTable:
    """A file's unwind table: from the disk cache once, then from memory (by file identity)."""
    key = f"{file_key(path)}-cfi-v{CFI_FORMAT}"
    if key not in _tables:
        data = load_or_build(key, lambda: CallFrameTable.from_elf(path).to_json())
        _tables[key] = CallFrameTable.from_json(data)
    return _tables[key]


class LiveProcess:
    """A process running a known Program.

    Built before the process is stopped (everything slow happens here: module
    list, unwind tables, symbols); `stopped()` then binds it to the tracee.
    """

    def __init__(self, pid: int, program: Program) -> None:
        self.pid = pid
        self.program = program
        self.tracee: Tracee | None = None
        bias = load_bias(pid, program.path)
        if bias is None:
            raise TargetError(
                f"process {pid} runs {os.path.realpath(procfs.exe_path(pid))}, "
                f"not {program.name}; give the binary the process was started from."
            )
        self.bias = bias
        changed = TargetError(
            f"process {pid} changed its mappings while they were read (it exec'd, perhaps "
            "updated by another command); run the command again."
        )
        try:
            self._set_maps(procfs.maps(pid))
            self.modules = self._modules()
            tables = [_call_frame_table(m.file) for m in self.modules]
        except FileNotFoundError:
            raise changed from None
        main = [m for m in self.modules if same_file(m.file, program.path)]
        if not main:
            raise changed
        self._main = main[0]
        self._module_map = ModuleMap(
            [(m.start, m.end, m.bias, m.path, t) for m, t in zip(self.modules, tables, strict=True)]
        )

    def _set_maps(self, maps: list[Mapping]) -> None:
        self.maps = maps
        self._starts = [m.start for m in maps]

    def stopped(self, tracee: Tracee) -> None:
        """Bind to the stopped tracee and re-read its mappings (the heap may have grown)."""
        self.tracee = tracee
        self._set_maps(tracee.maps())

    def _modules(self) -> list[Module]:
        """The ELF files mapped in the process, the program's own with its full symbols."""
        modules = []
        for image in mapped_images(self.pid, self.maps):
            if same_file(image.file, self.program.path):
                symbols = self.program.symbols
            else:
                symbols = SymbolTable(image.image.symbols)
            start = min(m.start for m in image.mappings)
            end = max(m.end for m in image.mappings)
            modules.append(Module(image.path, image.file, start, end, image.bias, symbols))
        return modules

    def mapping_at(self, addr: int) -> Mapping | None:
        """The mapping that holds a runtime address."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self.maps[i].end:
            return self.maps[i]
        return None

    def region(self, addr: int) -> str:
        """Classify an address: program 'data' or 'code', 'heap', 'stack', 'library', 'unmapped'."""
        mapping = self.mapping_at(addr)
        if mapping is None:
            return "unmapped"
        if mapping.path == "[stack]":
            return "stack"
        if self._main.start <= addr < self._main.end and mapping.path == self._main.path:
            return "data" if "w" in mapping.perms else "code"
        if mapping.path in ("", "[heap]") and "w" in mapping.perms:
            return "heap"
        return "library"

    def symbol_at(self, addr: int) -> tuple[str, int] | None:
        """(symbol name, offset) for a runtime address in any module; library names get
        @lib, and the program's file-local symbols that share a name `unit.c:`."""
        for module in self.modules:
            if module.start <= addr < module.end:
                sym = module.symbols.containing(addr - module.bias)
                if sym is None:
                    return None
                offset = addr - module.bias - sym.addr
                if module is self._main:
                    return module.symbols.name_of(sym), offset
                return f"{sym.name}@{Path(module.path).name}", offset
        return None

    def code_name(self, addr: int) -> str:
        """A readable name for a code address: its function (from DWARF when known), else
        symbol@library, else library+offset."""
        if self._main.start <= addr < self._main.end:
            function = self.program.index.function_at(addr - self.bias)
            if function is not None:
                return function.name
        found = self.symbol_at(addr)
        if found is not None:
            return found[0]
        module = next((m for m in self.modules if m.start <= addr < m.end), None)
        if module is None:
            return f"{addr:#x}"
        return f"{Path(module.path).name}+{addr - module.bias:#x}"

    def code_start(self, addr: int) -> int | None:
        """Start of the function (or function part) holding a code address, when known."""
        if self._main.start <= addr < self._main.end:
            function = self.program.index.function_at(addr - self.bias)
            if function is not None:
                link = addr - self.bias
                lo = next((lo for lo, hi in function.ranges if lo <= link < hi), None)
                if lo is not None:
                    return lo + self.bias
        found = self.symbol_at(addr)
        return addr - found[1] if found else None

    def cfa_rule_at(self, link_pc: int) -> CfaRule | None:
        """How the program's own code at a link-time pc computes its frame's CFA."""
        entry = self._module_map.lookup(link_pc + self.bias)
        row = entry.table.row_at(link_pc) if entry is not None else None
        return row.cfa if row is not None else None

    def frames(self) -> Frames:
        """The current thread's frames, unwound with CFI from the registers at the stop."""
        assert self.tracee is not None, "frames() needs a stopped tracee"
        regs = self.tracee.regs()
        mapping = self.mapping_at(regs.rsp)
        stack = _StackCopy(self.tracee, regs.rsp, mapping)
        size = mapping.end - regs.rsp if mapping is not None else STACK_UNKNOWN
        return unwind(regs_to_dwarf(regs), self._module_map, stack.read_word, size)


class _StackCopy:
    """The stack of a stopped thread in use (from its stack pointer to the end of its
    mapping), read in one go: unwinding reads a few words per frame there, each a system
    call otherwise.  Other words are read one by one."""

    def __init__(self, tracee: Tracee, sp: int, mapping: Mapping | None) -> None:
        self.tracee = tracee
        self.start = sp
        size = mapping.end - sp if mapping is not None else 0
        try:
            self.data = tracee.read(sp, size)
        except OSError:
            self.data = b""

    def read_word(self, addr: int) -> int:
        """The 64-bit word at addr."""
        offset = addr - self.start
        if 0 <= offset <= len(self.data) - 8:
            return int.from_bytes(self.data[offset : offset + 8], "little")
        return self.tracee.read_word(addr)
