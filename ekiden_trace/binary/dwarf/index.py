"""DebugIndex: the DWARF of one binary, indexed for fast queries.

The index is built once per binary (keyed by GNU build-id) by one pass over
the DWARF (see build.py) and cached on disk as JSON; later loads only read
the JSON.  Every query is a dict look-up, a bisection or a walk down a short
chain of scopes.
"""

from __future__ import annotations

import gc
import os
from bisect import bisect_right
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ekiden_trace.binary.dwarf.cache import file_key, load_or_build, store
from ekiden_trace.binary.dwarf.model import Function, LazyVariables, Location, Scope, Variable
from ekiden_trace.binary.dwarf.types import VOID, VOID_ID, TypeInfo, normalize_base_name
from ekiden_trace.binary.elf import ElfBinary

__all__ = ["FORMAT", "DebugIndex", "Function", "Location", "Scope", "Variable"]

FORMAT = 3
"""Version of the cached index layout; part of the cache key and of the data."""

_STATIC_SCOPES = frozenset({"global", "file_static", "function_static"})
_TAGS = ("struct", "union", "enum")


def build_index(path: str) -> dict[str, Any]:
    """The cold pass of build.py, imported only when an index is built: it brings
    pyelftools' DWARF reader, which a warm run never needs."""
    from ekiden_trace.binary.dwarf import build

    return build.build_index(path)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: building or decoding an index allocates millions of
    acyclic objects, and collections triggered by them double the time.

    On the way out the objects allocated so far are frozen (moved out of the
    collector's reach): the index lives as long as the tool, and the collector
    would otherwise walk all of it twice more, as it promotes it to older
    generations, which costs as much as decoding the cached index.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def unit_names(cus: list[str], comp_dirs: list[str | None]) -> list[str]:
    """The name of each compilation unit in keys and messages: its DW_AT_name (the source
    path as compiled), unless another unit has the same basename (`a/util.c` and
    `b/util.c`, each compiled in its own folder, are both `util.c`); then its path, the
    unit's comp_dir joined, relative to the folder all units of that basename share."""
    names = list(cus)
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(cus):
        groups.setdefault(os.path.basename(name), []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        paths = [os.path.normpath(os.path.join(comp_dirs[i] or "", cus[i])) for i in members]
        if not all(os.path.isabs(path) for path in paths):
            continue  # no comp_dir to place them by: DW_AT_name is all there is
        common = os.path.commonpath([os.path.dirname(path) for path in paths])
        for i, path in zip(members, paths, strict=True):
            names[i] = os.path.relpath(path, common)
    return names


class DebugIndex:
    """Types, variables, functions, scopes and lines of one ELF binary.

    Attributes: ``path``, ``build_id`` (GNU build-id in hex, or the sha256
    of the file when it has none), ``has_debug_info`` (False for a binary
    without .debug_info: every query then finds nothing), ``cus`` (each
    compilation unit's DW_AT_name), ``units`` (each unit's name in keys, see
    unit_names), ``types``, ``functions``, ``scopes``, ``variables``.
    """

    def __init__(self, path: str, build_id: str, data: dict[str, Any]) -> None:
        self.path = path
        self.build_id = build_id
        self.has_debug_info = bool(data.get("has_debug_info"))
        self.cus: list[str] = list(data.get("cus", []))
        self.comp_dirs: list[str | None] = list(data.get("comp_dirs", []))
        self.units = unit_names(self.cus, self.comp_dirs)
        self.types: dict[int, TypeInfo] = {VOID_ID: VOID}
        for row in data.get("types", []):
            self.types[row[0]] = TypeInfo.from_json(row)
        self._type_names: dict[str, int] = data.get("type_names", {})

        rows = data.get("functions", [])
        self.functions = [Function.from_json(r, self.units) for r in rows]
        self._function_cu: list[int] = [r[1] for r in rows]
        self.scopes = [Scope.from_json(r) for r in data.get("scopes", [])]
        self._roots: list[int] = [0] * len(self.functions)
        for i, scope in enumerate(self.scopes):
            if scope.parent is None:
                self._roots[scope.function] = i
            else:
                self.scopes[scope.parent].children.append(i)
        spans = sorted((lo, hi, i) for i, f in enumerate(self.functions) for lo, hi in f.ranges)
        self._fn_lo = [s[0] for s in spans]
        self._fn_hi = [s[1] for s in spans]
        self._fn_index = [s[2] for s in spans]

        self.variables = LazyVariables(data.get("variables", []), self.units)
        self._by_name: dict[str, list[int]] = {}
        for i, row in enumerate(self.variables.rows):
            self._by_name.setdefault(row[0], []).append(i)
        self._cu_vars: list[dict[str, int]] = data.get("cu_vars", [])
        self._global_vars: dict[str, int] = data.get("global_vars", {})
        self._statics = {int(k): v for k, v in data.get("statics", {}).items()}

        lines = data.get("lines", {})
        self._line_files: list[str] = lines.get("files", [])
        self._line_addr: list[int] = lines.get("addr", [])
        self._line_file: list[int] = lines.get("file", [])
        self._line_line: list[int] = lines.get("line", [])

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DebugIndex:
        """Index the ELF file at path, from the on-disk cache when possible."""
        path = os.fspath(path)
        build_id = file_key(path)
        with ElfBinary(path) as binary:
            has_debug_info = binary.has_debug_info
        if not has_debug_info:
            return cls(path, build_id, {"has_debug_info": False})
        key = f"{build_id}-dwarf-v{FORMAT}"

        def build() -> dict[str, Any]:
            return {**build_index(path), "format": FORMAT}

        with _gc_paused():
            data = load_or_build(key, build)
            if data.get("format") != FORMAT:  # an entry left by an older layout
                data = build()
                store(key, data)
            return cls(path, build_id, data)

    # ---------------------------------------------------------------- types

    def type_by_name(self, name: str) -> int | None:
        """Id of the type C calls name: "struct table", "enum mode", "unsigned long", a typedef.

        A complete definition is preferred over a declaration.
        """
        words = name.split()
        if not words:
            return None
        if words[0] in _TAGS and len(words) == 2:
            key = f"{words[0]} {words[1]}"
        else:
            key = normalize_base_name(" ".join(words))
        return self._type_names.get(key)

    # ------------------------------------------------------------ functions

    def function_at(self, pc: int) -> Function | None:
        """The out-of-line function whose code contains the link-time address pc."""
        index = self._function_index(pc)
        return None if index is None else self.functions[index]

    def inline_chain_at(self, pc: int) -> list[str]:
        """Names of the functions inlined at pc, innermost first (empty if none)."""
        index = self._function_index(pc)
        if index is None:
            return []
        chain = self._scope_chain(index, pc)
        return [self.scopes[s].name or "?" for s in chain if self.scopes[s].kind == "inlined"]

    def line_at(self, pc: int) -> tuple[str, int] | None:
        """Source file (full path as best known) and line of the code at pc."""
        i = bisect_right(self._line_addr, pc) - 1
        if i < 0 or self._line_file[i] < 0:
            return None
        return self._line_files[self._line_file[i]], self._line_line[i]

    def _function_index(self, pc: int) -> int | None:
        i = bisect_right(self._fn_lo, pc) - 1
        if i >= 0 and pc < self._fn_hi[i]:
            return self._fn_index[i]
        return None

    def _scope_chain(self, function: int, pc: int) -> list[int]:
        """Scopes containing pc, innermost first, ending with the function's body."""
        current = self._roots[function]
        chain = [current]
        while True:
            for child in self.scopes[current].children:
                if self.scopes[child].contains(pc):
                    current = child
                    chain.append(child)
                    break
            else:
                chain.reverse()
                return chain

    # ------------------------------------------------------------ variables

    def variables_named(self, name: str) -> list[Variable]:
        """Every variable called name: globals, statics, locals and parameters."""
        return [self.variables[i] for i in self._by_name.get(name, [])]

    def globals(self) -> list[Variable]:
        """Variables with static storage: globals, file statics and function statics."""
        rows = self.variables.rows
        return [self.variables[i] for i, row in enumerate(rows) if row[1] in _STATIC_SCOPES]

    def resolve(self, pc: int, name: str, file: str | None = None) -> Variable | None:
        """The variable name as C sees it from the code at link-time address pc.

        Scopes are searched as C does: from the innermost block containing pc
        outwards (blocks, inlined calls, the function's locals, parameters
        and statics), then the file statics of the function's compilation
        unit, then the globals.  Lexical block ranges are approximate at -O2
        and a mark may fall just outside its block, so a name found nowhere
        is finally looked for in all blocks of the function containing pc,
        and taken when unique.  With pc 0 (a file-scope mark), file (the
        mark's ``__FILE__``) picks the compilation unit.
        """
        cu: int | None = None
        chain: list[int] = []
        function = self._function_index(pc) if pc else None
        if function is not None:
            chain = self._scope_chain(function, pc)
            for s in chain:
                scope = self.scopes[s]
                index = scope.vars.get(name)
                if index is None and scope.kind != "block" and scope.origin is not None:
                    index = self._statics.get(scope.origin, {}).get(name)
                if index is not None:
                    return self.variables[index]
            cu = self._function_cu[function]
        elif file is not None:
            cu = self.cu_index(file)
        index = self._cu_vars[cu].get(name) if cu is not None else None
        if index is None:
            index = self._global_vars.get(name)
        if index is None:
            index = self._unique_in_function(chain, name)
        return None if index is None else self.variables[index]

    def _unique_in_function(self, chain: list[int], name: str) -> int | None:
        """The only variable called name in the innermost (inlined) function's blocks."""
        for s in chain:
            if self.scopes[s].kind == "block":
                continue
            found: set[int] = set()
            todo = [s]
            while todo:
                scope = self.scopes[todo.pop()]
                index = scope.vars.get(name)
                if index is not None:
                    found.add(index)
                todo.extend(c for c in scope.children if self.scopes[c].kind == "block")
            if found:
                return found.pop() if len(found) == 1 else None
        return None

    def cu_index(self, file: str) -> int | None:
        """Index in ``cus`` of the unit compiled from file (exact, then unique basename)."""
        if file in self.cus:
            return self.cus.index(file)
        wanted = os.path.normpath(file)
        if os.path.isabs(wanted):
            for i, (name, comp_dir) in enumerate(zip(self.cus, self.comp_dirs, strict=False)):
                if os.path.normpath(os.path.join(comp_dir or "", name)) == wanted:
                    return i
        base = os.path.basename(wanted)
        matches = [i for i, name in enumerate(self.cus) if os.path.basename(name) == base]
        return matches[0] if len(matches) == 1 else None
