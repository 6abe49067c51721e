"""Variables, functions and lexical scopes of a DWARF index, as plain data.

Each class has a compact JSON form (a list) so the index can be cached.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

Location = dict[str, Any]
"""Where a variable lives, one of:

* ``{"kind": "addr", "addr": int}`` static storage at a link-time address;
* ``{"kind": "expr", "expr": hex}`` one DWARF expression, valid in the
  variable's whole scope;
* ``{"kind": "list", "ranges": [[lo, hi, hex], ...]}`` a location list with
  link-time pc ranges ``lo <= pc < hi``; the first matching entry applies;
* ``{"kind": "none"}`` optimised out (or a compile-time constant).
"""


_COMPACT = json.JSONEncoder(separators=(",", ":"))


@dataclass
class Variable:
    """A named variable and where it lives.

    scope: global, file_static, function_static, local or parameter.
    ``function`` is the function a local, parameter or function static
    belongs to; when that function was inlined, ``inlined_into`` names the
    out-of-line function its code was inlined into.  ``cu`` is the
    compilation unit's name (index.unit_names: the source path as given to the
    compiler, unless another unit has the same basename).
    """

    name: str
    scope: str
    function: str | None
    cu: str
    type: int
    location: Location
    decl_file: str | None = None
    decl_line: int | None = None
    external: bool = False
    inlined_into: str | None = None

    def to_json(self, cu: int) -> list[Any]:
        """Compact JSON form; the CU is stored as its index cu in the unit list.

        The location is kept as a JSON string: a loader then scans it as one
        string and decodes it only for the variables it uses.
        """
        return [
            self.name,
            self.scope,
            self.function,
            cu,
            self.type,
            _COMPACT.encode(self.location),
            self.decl_file,
            self.decl_line,
            self.external,
            self.inlined_into,
        ]

    @classmethod
    def from_json(cls, row: list[Any], cus: list[str]) -> Variable:
        """Rebuild a Variable from ``to_json`` output."""
        return cls(row[0], row[1], row[2], cus[row[3]], row[4], json.loads(row[5]), *row[6:])


class LazyVariables(Sequence[Variable]):
    """Variables decoded from their JSON rows on first access."""

    def __init__(self, rows: list[list[Any]], cus: list[str]) -> None:
        self.rows = rows
        self._cus = cus
        self._done: list[Variable | None] = [None] * len(rows)

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> Variable: ...

    @overload
    def __getitem__(self, index: slice) -> list[Variable]: ...

    def __getitem__(self, index: int | slice) -> Variable | list[Variable]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self.rows)))]
        var = self._done[index]
        if var is None:
            var = Variable.from_json(self.rows[index], self._cus)
            self._done[index] = var
        return var


@dataclass
class Function:
    """An out-of-line function: its code ranges ``[[lo, hi), ...]`` and frame base."""

    name: str
    cu: str
    ranges: list[list[int]]
    frame_base: str | None = None
    external: bool = False
    decl_file: str | None = None
    decl_line: int | None = None

    def to_json(self, cu: int) -> list[Any]:
        """Compact JSON form; the CU is stored as its index cu in the unit list."""
        return [
            self.name,
            cu,
            self.ranges,
            self.frame_base,
            self.external,
            self.decl_file,
            self.decl_line,
        ]

    @classmethod
    def from_json(cls, row: list[Any], cus: list[str]) -> Function:
        """Rebuild a Function from ``to_json`` output."""
        return cls(row[0], cus[row[1]], *row[2:])


@dataclass
class Scope:
    """A lexical scope with code: a function body, a block or an inlined call.

    kind: function, block or inlined.  ``function`` is the index of the
    out-of-line function the scope's code belongs to; ``name`` is the
    function's (or the inlined function's) name for function and inlined
    scopes; ``origin`` is the DIE offset of the function's abstract
    definition, which keys its static variables.  ``vars`` maps names to
    variable indexes.
    """

    kind: str
    parent: int | None
    ranges: list[list[int]]
    function: int
    name: str | None = None
    origin: int | None = None
    vars: dict[str, int] = field(default_factory=dict)
    children: list[int] = field(default_factory=list)

    def contains(self, pc: int) -> bool:
        """Whether pc lies in one of the scope's ranges."""
        return any(lo <= pc < hi for lo, hi in self.ranges)

    def to_json(self) -> list[Any]:
        """Compact JSON form (children are rebuilt from parents)."""
        return [
            self.kind,
            self.parent,
            self.ranges,
            self.function,
            self.name,
            self.origin,
            self.vars,
        ]

    @classmethod
    def from_json(cls, row: list[Any]) -> Scope:
        """Rebuild a Scope from ``to_json`` output (without children)."""
        return cls(*row)
