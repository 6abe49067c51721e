"""The cold pass: read a binary's DWARF once and produce the index as JSON data.

Each compilation unit's DIEs are read in one linear pass (no DIE is parsed
twice and none is kept: pyelftools' own DIE cache would hold them all), with
a stack of contexts standing for the enclosing DIEs.  References that may
point forward (DW_AT_abstract_origin, DW_AT_specification) are recorded as
offsets and resolved once every unit has been read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from elftools.dwarf.compileunit import CompileUnit
from elftools.dwarf.die import DIE
from elftools.dwarf.dwarfinfo import DWARFInfo
from elftools.elf.elffile import ELFFile

from ekiden_trace.binary.dwarf.dies import Attr, RawDIE, SectionData, UnitReader
from ekiden_trace.binary.dwarf.model import Function, Location, Scope, Variable
from ekiden_trace.binary.dwarf.sections import (
    MAX_ADDR,
    LineHeader,
    Sequence,
    read_line_rows,
    read_loc_v4,
    read_loclist,
    read_ranges_v4,
    read_rnglist,
    uleb,
)
from ekiden_trace.binary.dwarf.types import (
    VOID,
    VOID_ID,
    Member,
    TypeInfo,
    byte_size,
    normalize_base_name,
)

_ENCODINGS = {
    0x1: "address",
    0x2: "bool",
    0x3: "complex_float",
    0x4: "float",
    0x5: "signed",
    0x6: "signed_char",
    0x7: "unsigned",
    0x8: "unsigned_char",
    0x9: "imaginary_float",
    0xA: "packed_decimal",
    0xB: "numeric_string",
    0xC: "edited",
    0xD: "signed_fixed",
    0xE: "unsigned_fixed",
    0xF: "decimal_float",
    0x10: "utf",
}
_SIGNED = frozenset({"signed", "signed_char", "signed_fixed"})
_REF_FORMS = frozenset(
    {
        "DW_FORM_ref1",
        "DW_FORM_ref2",
        "DW_FORM_ref4",
        "DW_FORM_ref8",
        "DW_FORM_ref_udata",
        "DW_FORM_ref_addr",
    }
)
_BLOCK_FORMS = frozenset(
    {"DW_FORM_exprloc", "DW_FORM_block1", "DW_FORM_block2", "DW_FORM_block4", "DW_FORM_block"}
)
_ADDR_FORMS = frozenset(
    {
        "DW_FORM_addr",
        "DW_FORM_addrx",
        "DW_FORM_addrx1",
        "DW_FORM_addrx2",
        "DW_FORM_addrx3",
        "DW_FORM_addrx4",
        "DW_FORM_GNU_addr_index",
    }
)
_DATA_WIDTH = {"DW_FORM_data1": 1, "DW_FORM_data2": 2, "DW_FORM_data4": 4, "DW_FORM_data8": 8}
_CONST_FORMS = frozenset({*_DATA_WIDTH, "DW_FORM_udata", "DW_FORM_sdata", "DW_FORM_implicit_const"})
_MODIFIERS = {
    "DW_TAG_pointer_type": "pointer",
    "DW_TAG_reference_type": "pointer",
    "DW_TAG_rvalue_reference_type": "pointer",
    "DW_TAG_ptr_to_member_type": "pointer",
    "DW_TAG_const_type": "const",
    "DW_TAG_volatile_type": "volatile",
    "DW_TAG_restrict_type": "restrict",
    "DW_TAG_atomic_type": "atomic",
    "DW_TAG_typedef": "typedef",
}
_AGGREGATES = {
    "DW_TAG_structure_type": "struct",
    "DW_TAG_class_type": "struct",
    "DW_TAG_union_type": "union",
}
_OP_ADDR = 0x03
_OP_ADDRX = (0xA1, 0xFB)  # DW_OP_addrx, DW_OP_GNU_addr_index


@dataclass
class _Ctx:
    """What the DIE being read is nested in."""

    kind: str  # cu, scope, abstract, struct, enum, array, functype, skip
    scope: int = -1  # scope index (kind scope)
    origin: int = -1  # abstract subprogram offset (kind abstract)
    type: TypeInfo = field(default_factory=lambda: VOID)  # struct/enum/array/functype
    elem: int = VOID_ID  # array element type
    dims: int = 0  # array dimensions seen so far
    values: list[tuple[str, int, str]] = field(default_factory=list)  # enumerators


_SKIP = _Ctx("skip")


@dataclass
class _Unit:
    """Per-CU facts needed to decode its DIEs."""

    index: int
    cu: CompileUnit
    reader: UnitReader
    version: int
    base: int
    files: list[str | None]

    def file(self, attr: Attr | None) -> str | None:
        if attr is None or not 0 <= attr.value < len(self.files):
            return None
        return self.files[int(attr.value)]


@dataclass
class _PendingVar:
    offset: int
    scope: str | None  # None: global or file static, decided by DW_AT_external
    location: Location
    attach: int | None = None  # scope index whose vars it joins
    origin: int | None = None  # abstract function whose static it is


@dataclass
class _Decl:
    """What a variable or function DIE says about itself (merged along its refs)."""

    name: str | None
    type: int | None
    file: str | None
    line: int | None
    external: bool
    cu: int
    ref: int | None = None  # DW_AT_abstract_origin or DW_AT_specification


def build_index(path: str) -> dict[str, Any]:
    """Read the DWARF of the ELF file at path and return the index as JSON data."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        if not elf.has_dwarf_info() or elf.get_section_by_name(".debug_info") is None:
            return {"has_debug_info": False}
        builder = _Builder(elf.get_dwarf_info())
        builder.run()
        return builder.result()


def _text(attr: Any) -> str | None:
    """A string attribute of a pyelftools DIE (the unit's top DIE)."""
    if attr is None:
        return None
    value = attr.value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _name(die: RawDIE) -> str | None:
    attr = die.attributes.get("DW_AT_name")
    return None if attr is None else str(attr.value)


def _const(attr: Attr | None) -> int | None:
    if attr is None or attr.form not in _CONST_FORMS:
        return None
    value = int(attr.value)
    width = _DATA_WIDTH.get(attr.form)
    if width and value == (1 << (8 * width)) - 1:
        return -1
    return value


def _live(lo: int) -> bool:
    """False for the addresses linkers give to discarded code."""
    return 0 < lo < MAX_ADDR - 1


class _Builder:
    """Reads every unit (``run``), then assembles the index (``result``)."""

    def __init__(self, dwarf: DWARFInfo) -> None:
        self.dwarf = dwarf
        self.sections = SectionData(dwarf)
        self.types: dict[int, TypeInfo] = {VOID_ID: VOID}
        self.cus: list[str] = []
        self.comp_dirs: list[str | None] = []
        self.decls: dict[int, _Decl] = {}
        self.vars: list[_PendingVar] = []
        self.functions: list[tuple[int, list[list[int]], str | None]] = []
        self.subprograms: list[int] = []  # offsets of every function's DIEs, for _declared_in
        self.scopes: list[Scope] = []
        self.sequences: list[Sequence] = []
        self.file_ids: dict[str, int] = {}
        self.type_names: dict[str, int] = {}
        self.handlers: dict[str, Callable[[RawDIE, _Ctx, _Unit], _Ctx]] = {
            "DW_TAG_base_type": self._base_type,
            "DW_TAG_unspecified_type": self._unspecified_type,
            "DW_TAG_structure_type": self._aggregate,
            "DW_TAG_class_type": self._aggregate,
            "DW_TAG_union_type": self._aggregate,
            "DW_TAG_member": self._member,
            "DW_TAG_enumeration_type": self._enum,
            "DW_TAG_enumerator": self._enumerator,
            "DW_TAG_array_type": self._array,
            "DW_TAG_subrange_type": self._subrange,
            "DW_TAG_subroutine_type": self._subroutine_type,
            "DW_TAG_unspecified_parameters": self._unspecified_parameters,
            "DW_TAG_variable": self._variable,
            "DW_TAG_formal_parameter": self._variable,
            "DW_TAG_subprogram": self._subprogram,
            "DW_TAG_inlined_subroutine": self._inlined,
            "DW_TAG_lexical_block": self._lexical_block,
            "DW_TAG_namespace": self._namespace,
        }
        for tag in _MODIFIERS:
            self.handlers[tag] = self._modifier

    # ------------------------------------------------------------------ walk

    def run(self) -> None:
        for cu in self.dwarf.iter_CUs():
            self._walk(cu)

    def _walk(self, cu: CompileUnit) -> None:
        top = cu.get_top_DIE()
        if top.tag not in ("DW_TAG_compile_unit", "DW_TAG_partial_unit"):
            return
        unit = self._unit(cu, top)
        read = unit.reader.read
        handlers = self.handlers
        stack = [_Ctx("cu")]
        pos = top.offset + top.size
        end = cu.cu_offset + cu.size
        while pos < end:
            die, pos = read(pos)
            tag = die.tag
            if not tag:  # the null entry ending a list of children
                done = stack.pop()
                if done.kind == "enum":
                    self._finish_enum(done)
                if not stack:
                    break
                continue
            parent = stack[-1]
            handler = handlers.get(tag) if parent is not _SKIP else None
            child = handler(die, parent, unit) if handler else _SKIP
            if not die.has_children:
                continue
            if child is _SKIP:
                sibling = die.attributes.get("DW_AT_sibling")
                if sibling is not None and sibling.form in _REF_FORMS:
                    pos = sibling.value
                    continue
            stack.append(child)

    def _unit(self, cu: CompileUnit, top: DIE) -> _Unit:
        name = _text(top.attributes.get("DW_AT_name")) or f"<cu@{cu.cu_offset:#x}>"
        comp_dir = _text(top.attributes.get("DW_AT_comp_dir"))
        low_pc = top.attributes.get("DW_AT_low_pc")
        unit = _Unit(
            index=len(self.cus),
            cu=cu,
            reader=UnitReader(self.sections, cu, top),
            version=cu["version"],
            base=int(low_pc.value) if low_pc is not None else 0,
            files=[],
        )
        self.cus.append(name)
        self.comp_dirs.append(comp_dir)
        if "DW_AT_stmt_list" in top.attributes:
            self._line_program(unit, comp_dir or "")
        return unit

    def _line_program(self, unit: _Unit, comp_dir: str) -> None:
        program = self.dwarf.line_program_for_CU(unit.cu)
        if program is None:
            return
        header = program.header
        dirs = [d.decode("utf-8", "replace") for d in header["include_directory"]]
        version = header["version"]
        if version < 5:
            dirs.insert(0, comp_dir)
            unit.files.append(None)  # DWARF 2-4 file numbers start at 1
        for entry in header["file_entry"]:
            name = entry.name.decode("utf-8", "replace")
            directory = dirs[entry.dir_index] if entry.dir_index < len(dirs) else ""
            unit.files.append(os.path.normpath(os.path.join(comp_dir, directory, name)))
        hdr = LineHeader(
            min_inst_length=header["minimum_instruction_length"],
            line_base=header["line_base"],
            line_range=header["line_range"],
            opcode_base=header["opcode_base"],
            standard_opcode_lengths=list(header["standard_opcode_lengths"]),
        )
        rows = read_line_rows(
            self.sections.line, program.program_start_offset, program.program_end_offset, hdr
        )
        file_ids = [
            -1 if f is None else self.file_ids.setdefault(f, len(self.file_ids)) for f in unit.files
        ]
        for seq in rows:
            if len(seq) < 2 or not _live(seq[0][0]):
                continue
            self.sequences.append(
                [(a, file_ids[f] if 0 <= f < len(file_ids) else -1, ln) for a, f, ln in seq]
            )

    # ------------------------------------------------------------- helpers

    def _ref(self, die: RawDIE, name: str) -> int | None:
        attr = die.attributes.get(name)
        if attr is None or attr.form not in _REF_FORMS:
            return None
        return int(attr.value)

    def _type_ref(self, die: RawDIE) -> int:
        ref = self._ref(die, "DW_AT_type")
        return VOID_ID if ref is None else ref

    def _origin_ref(self, die: RawDIE) -> int | None:
        ref = self._ref(die, "DW_AT_abstract_origin")
        return ref if ref is not None else self._ref(die, "DW_AT_specification")

    def _record_decl(self, die: RawDIE, unit: _Unit) -> None:
        a = die.attributes
        line = a.get("DW_AT_decl_line")
        external = a.get("DW_AT_external")
        self.decls[die.offset] = _Decl(
            _name(die),
            self._ref(die, "DW_AT_type"),
            unit.file(a.get("DW_AT_decl_file")),
            int(line.value) if line is not None else None,
            bool(external.value) if external is not None else False,
            unit.index,
            self._origin_ref(die),
        )

    def _decl(self, offset: int) -> _Decl:
        """Merge what a DIE and the DIEs it refers to (origin, specification) say.

        The unit is the referred DIE's: with -flto, code in an artificial
        unit refers to the DIEs of the unit its source was compiled as.
        """
        merged = _Decl(None, None, None, None, False, -1)
        current: int | None = offset
        for _ in range(8):
            d = self.decls.get(current) if current is not None else None
            if d is None:
                break
            merged.name = merged.name or d.name
            merged.type = merged.type if merged.type is not None else d.type
            merged.file = merged.file or d.file
            merged.line = merged.line if merged.line is not None else d.line
            merged.external = merged.external or d.external
            merged.cu = d.cu
            current = d.ref
        return merged

    def _root(self, offset: int) -> int:
        """The end of a DIE's chain of abstract origins: the function's first description."""
        for _ in range(8):
            d = self.decls.get(offset)
            if d is None or d.ref is None:
                break
            offset = d.ref
        return offset

    def _pc_ranges(self, die: RawDIE, unit: _Unit) -> list[list[int]] | None:
        """Code ranges of a DIE; None if it has no pc attributes at all."""
        a = die.attributes
        attr = a.get("DW_AT_ranges")
        if attr is not None:
            if unit.version >= 5:
                ranges = read_rnglist(
                    self.sections.rnglists, attr.value, unit.base, unit.reader.addrx
                )
            else:
                ranges = read_ranges_v4(self.sections.ranges, attr.value, unit.base)
        else:
            low = a.get("DW_AT_low_pc")
            if low is None:
                return None
            lo = int(low.value)
            high = a.get("DW_AT_high_pc")
            if high is None:
                hi = lo + 1
            elif high.form in _ADDR_FORMS:
                hi = int(high.value)
            else:
                hi = lo + int(high.value)
            ranges = [[lo, hi]] if lo < hi else []
        return [r for r in ranges if _live(r[0])]

    def _location(self, attr: Attr | None, unit: _Unit) -> Location:
        if attr is None:
            return {"kind": "none"}
        if attr.form in _BLOCK_FORMS:
            return self._expr_location(bytes(attr.value), unit)
        if attr.form in ("DW_FORM_sec_offset", "DW_FORM_loclistx") or (
            unit.version < 4 and attr.form in ("DW_FORM_data4", "DW_FORM_data8")
        ):
            if unit.version >= 5:
                ranges = read_loclist(
                    self.sections.loclists, attr.value, unit.base, unit.reader.addrx
                )
            else:
                ranges = read_loc_v4(self.sections.loc, attr.value, unit.base)
            return {"kind": "list", "ranges": ranges} if ranges else {"kind": "none"}
        return {"kind": "none"}

    def _expr_location(self, expr: bytes, unit: _Unit) -> Location:
        if not expr:
            return {"kind": "none"}
        addr: int | None = None
        if expr[0] == _OP_ADDR and len(expr) == 1 + unit.reader.addr_size:
            addr = int.from_bytes(expr[1:], "little")
        elif expr[0] in _OP_ADDRX:
            index, end = uleb(expr, 1)
            if end == len(expr):
                addr = unit.reader.addrx(index)
        if addr is None:
            return {"kind": "expr", "expr": expr.hex()}
        if not _live(addr):
            return {"kind": "none"}
        return {"kind": "addr", "addr": addr}

    def _add_scope(self, scope: Scope) -> _Ctx:
        index = len(self.scopes)
        self.scopes.append(scope)
        return _Ctx("scope", scope=index)

    # ----------------------------------------------------------- handlers

    def _base_type(self, die: RawDIE, ctx: _Ctx, unit: _Unit) -> _Ctx:
        a = die.attributes
        encoding = a.get("DW_AT_encoding")
        name = _name(die)
        self.types[die.offset] = TypeInfo(
            die.offset,
            "base",
            normalize_base_name(name) if name else None,
            _const(a.get("DW_AT_byte_size")),
            encoding=_ENCODINGS.get(encoding.value) if encoding is not None else None,
        )
        return _SKIP

    def _unspecified_type(self, die: RawDIE, ctx: _Ctx, unit: _Unit) -> _Ctx:
        self.types[die.offset] = TypeInfo(die.offset, "void", _name(die))
        return _SKIP

    def _modifier(self, die: RawDIE, ctx: _Ctx, unit: _Unit) -> _Ctx:
        kind = _MODIFIERS[die.tag]
        size = None
        if kind == "pointer":
            size = _const(die.attributes.get("DW_AT_byte_size")) or unit.reader.addr_size
        name = _name(die) if kind == "typedef" else None
        self.types[die.offset] = TypeInfo(die.offset, kind, name, size, self._type_ref(die))
        return _SKIP

    def _aggregate(self, die: RawDIE, ctx: _Ctx, unit: _Unit) -> _Ctx:
        a = die.attributes
        declaration = "DW_AT_declaration" in a
        t = TypeInfo(
            die.offset,
            _AGGREGATES[die.tag],
            _name(die),
            None if declaration else _const(a.get("DW_AT_byte_size")),
            declaration=declaration,
        )
        self.types[die.offset] = t
        return _Ctx("struct", type=t)

    def _member(self, die: RawDIE, ctx: _Ctx, unit: _Unit) -> _Ctx:
        if ctx.kind != "struct":
            return _SKIP
        a = die.attributes
        offset = 0
        loc = a.get("DW_AT_data_member_location")
        if loc is not None:
            if loc.form in _BLOCK_FORMS:
                expr = bytes(loc.value)
                if expr and expr[0] == 0x23:  # DW_OP_plus_uconst
                    offset = uleb(expr, 1)[0]
            else:
                offset = _const(loc) or 0
        bit_size = _const(a.get("DW_AT_bit_size"))
        bit_offset: int | None = None
        if bit_size is not None:
            data_bit = _const(a.get("DW_AT_data_bit_offset"))
            old_bit = _const(a.get("DW_AT_bit_offset"))
            if data_bit is not None:
                bit_offset = data_bit
            elif old_bit is not None:  # DWARF 2-3: counted from the storage unit's MSB
                storage = _const(a.get("DW_AT_byte_size"))
                if storage is None:
                    storage = byte_size(self.types, self._type_ref(die)) or 0
                bit_offset = offset * 8 + storage * 8 - old_bit - bit_size
            else:
                bit_offset = offset * 8
            offset = bit_offset // 8
        ctx.type.members.append(
            Member(_name(die), offset, self._type_ref(die), bit_size, bit_offset)
        )
        return _SKIP

    def _enum(self, die: RawDIE, ctx: _Ctx, unit: _Unit) -> _Ctx:
        a = die.attributes
        declaration = "DW_AT_declaration" in a
        encoding = a.get("DW_AT_encoding")
        t = TypeInfo(
            die.offset,
            "enum",
            _name(die),
            _const(a.get("DW_AT_byte_size")),
            self._ref(die, "DW_AT_type"),
            encoding=_ENCODINGS.get(encoding.value) if encoding is not None else None,
            declaration=declaration,
        )
        self.types[die.offset] = t
        return _Ctx("enum", type=t)

    def _enumerator(self, die: RawDIE, ctx: _Ctx, unit: _Unit) -> _Ctx:
        attr = die.attributes.get("DW_AT_const_value")
        name = _name(die)
        if ctx.kind == "enum" and attr is not None and name and attr.form in _CONST_FORMS:
            ctx.values.append((name, int(attr.value), attr.form))
        return _SKIP

    def _finish_enum(self, ctx: _Ctx) -> None:
        t = ctx.type
        encoding = t.encoding
        if encoding is None and t.target is not None and t.target in self.types:
            encoding = self.types[t.target].encoding
        if encoding is None:
            negative = any(v < 0 for _, v, _ in ctx.values)
            encoding = "signed" if negative else "unsigned"
        signed = encoding in _SIGNED
        t.encoding = "signed" if signed else "unsigned"
        for name, value, form in ctx.values:
            width = _DATA_WIDTH.get(form)
            if signed and width and value >= 1 << (8 * width - 1):
                value -= 1 << (8 * width)
            t.enumerators[name] = value

    def _array(self, die: RawDIE, ctx: _Ctx, unit: _Unit) -> _Ctx:
        elem = self._type_ref(die)
        t = TypeInfo(die.offset, "array", target=elem)
        self.types[die.offset] = t
        return _Ctx("array", type=t, elem=elem)

    def _subrange(self, die: RawDIE, ctx: _Ctx, unit: _Unit) -> _Ctx:
        if ctx.kind != "array":
            return _SKIP
        a = die.attributes
        count = _const(a.get("DW_AT_count"))
        if count is None:
            upper = _const(a.get("DW_AT_upper_bound"))
            if upper is not None:
                count = upper - (_const(a.get("DW_AT_lower_bound")) or 0) + 1
        if count is not None:
            count = max(count, 0)
        if ctx.dims == 0:
            ctx.type.count = count
        else:
            inner = TypeInfo(die.offset, "array", target=ctx.elem, count=count)
            self.types[die.offset] = inner
            ctx.type.target = die.offset
            ctx.type = inner
        ctx.dims += 1
        return _SKIP

    def _subroutine_type(self, die: RawDIE, ctx: _Ctx, unit: _Unit) -> _Ctx:
        prototyped = "DW_AT_prototyped" in die.attributes
        t = TypeInfo(
            die.offset, "function", target=self._type_ref(die), params=[] if prototyped else None
        )
        self.types[die.offset] = t
        return _Ctx("functype", type=t)

    def _unspecified_parameters(self, die: RawDIE, ctx: _Ctx, unit: _Unit) -> _Ctx:
        if ctx.kind == "functype":
            ctx.type.variadic = True
        return _SKIP

    def _variable(self, die: RawDIE, ctx: _Ctx, unit: _Unit) -> _Ctx:
        kind = ctx.kind
        is_param = die.tag == "DW_TAG_formal_parameter"
        if kind == "functype":
            if is_param:
                if ctx.type.params is None:
                    ctx.type.params = []
                ctx.type.params.append(self._type_ref(die))
            return _SKIP
        if kind not in ("cu", "scope", "abstract"):
            return _SKIP
        self._record_decl(die, unit)
        a = die.attributes
        if "DW_AT_declaration" in a:
            return _SKIP
        location = self._location(a.get("DW_AT_location"), unit)
        static = location["kind"] == "addr"
        if kind == "cu":
            self.vars.append(_PendingVar(die.offset, None, location))
        elif kind == "scope":
            scope = "parameter" if is_param else "function_static" if static else "local"
            self.vars.append(_PendingVar(die.offset, scope, location, ctx.scope))
        elif static and not is_param:  # a static in an abstract (inlined) function
            self.vars.append(
                _PendingVar(die.offset, "function_static", location, origin=ctx.origin)
            )
        return _SKIP

    def _subprogram(self, die: RawDIE, ctx: _Ctx, unit: _Unit) -> _Ctx:
        if ctx.kind not in ("cu", "scope", "abstract"):
            return _SKIP
        self._record_decl(die, unit)
        self.subprograms.append(die.offset)
        a = die.attributes
        if "DW_AT_declaration" in a:
            return _SKIP
        ranges = self._pc_ranges(die, unit)
        if ranges is None:
            return _Ctx("abstract", origin=die.offset)
        if not ranges:
            return _SKIP
        frame_base = a.get("DW_AT_frame_base")
        frame_hex = (
            bytes(frame_base.value).hex()
            if frame_base and frame_base.form in _BLOCK_FORMS
            else None
        )
        index = len(self.functions)
        self.functions.append((die.offset, ranges, frame_hex))
        origin = self._origin_ref(die)
        return self._add_scope(
            Scope("function", None, ranges, index, origin=die.offset if origin is None else origin)
        )

    def _inlined(self, die: RawDIE, ctx: _Ctx, unit: _Unit) -> _Ctx:
        if ctx.kind != "scope":
            return _SKIP
        ranges = self._pc_ranges(die, unit)
        if not ranges:
            return _SKIP
        parent = self.scopes[ctx.scope]
        return self._add_scope(
            Scope("inlined", ctx.scope, ranges, parent.function, origin=self._origin_ref(die))
        )

    def _lexical_block(self, die: RawDIE, ctx: _Ctx, unit: _Unit) -> _Ctx:
        if ctx.kind == "abstract":
            return ctx
        if ctx.kind != "scope":
            return _SKIP
        ranges = self._pc_ranges(die, unit)
        if ranges is None:
            return ctx
        if not ranges:
            return _SKIP
        parent = self.scopes[ctx.scope]
        return self._add_scope(Scope("block", ctx.scope, ranges, parent.function))

    def _namespace(self, die: RawDIE, ctx: _Ctx, unit: _Unit) -> _Ctx:
        return ctx if ctx.kind == "cu" else _SKIP

    # ---------------------------------------------------------- post-pass

    def result(self) -> dict[str, Any]:
        """The index as JSON-ready data (see DebugIndex for its use)."""
        functions, function_cus = self._finish_functions()
        self._finish_types()
        variables, cu_vars, global_vars, statics = self._finish_variables(functions)
        return {
            "has_debug_info": True,
            "cus": self.cus,
            "comp_dirs": self.comp_dirs,
            "types": [t.to_json() for t in self.types.values()],
            "type_names": self.type_names,
            "functions": [f.to_json(cu) for f, cu in zip(functions, function_cus, strict=True)],
            "scopes": [s.to_json() for s in self.scopes],
            "variables": variables,
            "cu_vars": cu_vars,
            "global_vars": global_vars,
            "statics": statics,
            "lines": self._line_table(),
        }

    def _finish_functions(self) -> tuple[list[Function], list[int]]:
        """The functions, and the index of each one's compilation unit."""
        functions: list[Function] = []
        cus: list[int] = []
        for offset, ranges, frame_base in self.functions:
            d = self._decl(offset)
            cus.append(d.cu)
            functions.append(
                Function(
                    d.name or "<anonymous>",
                    self.cus[d.cu],
                    ranges,
                    frame_base,
                    d.external,
                    d.file,
                    d.line,
                )
            )
        for scope in self.scopes:
            if scope.origin is not None:
                scope.origin = self._root(scope.origin)
            if scope.kind == "function":
                scope.name = functions[scope.function].name
            elif scope.kind == "inlined" and scope.origin is not None:
                scope.name = self._decl(scope.origin).name
        return functions, cus

    def _owner(self, index: int) -> Scope:
        """The function or inlined-call scope a scope belongs to."""
        scope = self.scopes[index]
        while scope.kind == "block" and scope.parent is not None:
            scope = self.scopes[scope.parent]
        return scope

    def _finish_variables(
        self, functions: list[Function]
    ) -> tuple[list[list[Any]], list[dict[str, int]], dict[str, int], dict[str, dict[str, int]]]:
        # A variable that another one names as its abstract origin (-flto's
        # early debug info) is described by that concrete one.
        abstract = {self.decls[pv.offset].ref for pv in self.vars}
        resolved: list[tuple[_PendingVar, _Decl, str]] = []
        chosen: dict[str, int] = {}
        for pv in self.vars:
            d = self._decl(pv.offset)
            if d.name is None or pv.offset in abstract:
                continue
            scope = pv.scope or ("global" if d.external else "file_static")
            if scope == "global":
                prev = chosen.get(d.name)
                if prev is None or (
                    resolved[prev][0].location["kind"] != "addr" and pv.location["kind"] == "addr"
                ):
                    chosen[d.name] = len(resolved)
            resolved.append((pv, d, scope))

        rows: list[list[Any]] = []
        cu_vars: list[dict[str, int]] = [{} for _ in self.cus]
        global_vars: dict[str, int] = {}
        statics: dict[str, dict[str, int]] = {}
        for i, (pv, d, scope) in enumerate(resolved):
            name = d.name
            assert name is not None
            if scope == "global" and chosen[name] != i:
                continue
            function = inlined_into = None
            origin = pv.origin
            if pv.attach is not None:
                owner = self._owner(pv.attach)
                function = owner.name
                if owner.kind == "inlined":
                    inlined_into = functions[owner.function].name
                if origin is None:
                    origin = owner.origin
            elif origin is not None:
                origin = self._declared_in(origin, d)
                function = self._decl(origin).name
            index = len(rows)
            var = Variable(
                name,
                scope,
                function,
                self.cus[d.cu],
                d.type if d.type is not None and d.type in self.types else VOID_ID,
                pv.location,
                d.file,
                d.line,
                d.external,
                inlined_into,
            )
            rows.append(var.to_json(d.cu))
            if scope == "global":
                global_vars[name] = index
            elif scope == "file_static":
                cu_vars[d.cu].setdefault(name, index)
            elif scope == "function_static" and origin is not None:
                statics.setdefault(str(self._root(origin)), {}).setdefault(name, index)
            if pv.attach is not None:
                self.scopes[pv.attach].vars.setdefault(name, index)
        return rows, cu_vars, global_vars, statics

    def _declared_in(self, origin: int, var: _Decl) -> int:
        """The function a static belongs to.  Usually its origin; but clang 14 puts the
        static of a function inlined everywhere under a bare DW_TAG_subprogram (no name,
        no origin), and then it is the function declared last before the static in the
        same file and unit (C functions do not nest)."""
        bare = self.decls[origin]
        if bare.name is not None or bare.ref is not None or var.line is None:
            return origin
        candidates = [
            (d.line, offset)
            for offset in self.subprograms
            if (d := self._decl(offset)).name is not None
            and d.cu == var.cu
            and d.file == var.file
            and d.line is not None
            and d.line <= var.line
        ]
        return max(candidates)[1] if candidates else origin

    def _finish_types(self) -> None:
        types = self.types
        by_key: dict[str, list[TypeInfo]] = {}
        for t in types.values():
            key = _type_key(t)
            if key is not None:
                by_key.setdefault(key, []).append(t)
            if t.target is not None and t.target not in types:
                t.target = VOID_ID
            for m in t.members:
                if m.type not in types:
                    m.type = VOID_ID
            if t.params is not None:
                t.params = [p if p in types else VOID_ID for p in t.params]
        for key, same in by_key.items():
            complete = [t for t in same if not t.declaration]
            self.type_names[key] = (complete or same)[0].id
            # An incomplete struct/union/enum takes the definition of the
            # same name when the program has only one layout for that name.
            if len(complete) == len(same) or not complete:
                continue
            if len({_shape(t) for t in complete}) != 1:
                continue
            model = complete[0]
            for t in same:
                if t.declaration:
                    t.size, t.target, t.encoding = model.size, model.target, model.encoding
                    t.members, t.enumerators = model.members, model.enumerators
                    t.declaration = False
        for t in types.values():
            if t.kind == "array" and t.count is not None:
                t.size = byte_size(types, t.id)

    def _line_table(self) -> dict[str, list[Any]]:
        addrs: list[int] = []
        files: list[int] = []
        lines: list[int] = []
        for seq in sorted(self.sequences, key=lambda s: s[0][0]):
            last = len(seq) - 1
            for i, (addr, file, line) in enumerate(seq):
                if i == last:
                    file = -1
                if addrs and addrs[-1] == addr:  # the later row at an address wins
                    addrs.pop()
                    files.pop()
                    lines.pop()
                if files and files[-1] == file and lines[-1] == line:
                    continue
                addrs.append(addr)
                files.append(file)
                lines.append(line)
        return {"files": list(self.file_ids), "addr": addrs, "file": files, "line": lines}


def _type_key(t: TypeInfo) -> str | None:
    """The name C code uses for a type: "struct table", "int", a typedef name."""
    if not t.name:
        return None
    if t.kind in ("struct", "union", "enum"):
        return f"{t.kind} {t.name}"
    if t.kind in ("base", "typedef"):
        return t.name
    return None


def _shape(t: TypeInfo) -> tuple[Any, ...]:
    return (
        t.kind,
        t.size,
        tuple((m.name, m.offset, m.bit_size, m.bit_offset) for m in t.members),
        tuple(sorted(t.enumerators.items())),
    )
