"""A fast reader of DIEs, for the one linear pass over .debug_info.

pyelftools parses each attribute through its generic ``construct`` layer,
which makes it spend about 15 µs per DIE and keep every DIE alive.  This
reader decodes the same encoding straight from the section bytes, keeps
only the attributes the index uses and resolves indirect forms (strx, addrx,
loclistx, rnglistx, unit-relative references) on the way.  pyelftools still
supplies the unit headers and each unit's top DIE.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from elftools.dwarf.compileunit import CompileUnit
from elftools.dwarf.die import DIE
from elftools.dwarf.dwarfinfo import DWARFInfo
from elftools.dwarf.enums import ENUM_DW_AT, ENUM_DW_FORM, ENUM_DW_TAG

from ekiden_trace.binary.dwarf.sections import sleb, uint, uleb

_TAG_NAMES = {code: name for name, code in ENUM_DW_TAG.items()}
_FORM_NAMES = {code: name for name, code in ENUM_DW_FORM.items()}
_WANTED = frozenset(
    {
        "DW_AT_name",
        "DW_AT_type",
        "DW_AT_byte_size",
        "DW_AT_encoding",
        "DW_AT_declaration",
        "DW_AT_data_member_location",
        "DW_AT_bit_size",
        "DW_AT_data_bit_offset",
        "DW_AT_bit_offset",
        "DW_AT_const_value",
        "DW_AT_count",
        "DW_AT_upper_bound",
        "DW_AT_lower_bound",
        "DW_AT_prototyped",
        "DW_AT_external",
        "DW_AT_location",
        "DW_AT_decl_file",
        "DW_AT_decl_line",
        "DW_AT_abstract_origin",
        "DW_AT_specification",
        "DW_AT_low_pc",
        "DW_AT_high_pc",
        "DW_AT_ranges",
        "DW_AT_frame_base",
        "DW_AT_sibling",
    }
)
_WANTED_CODES = {code: name for name, code in ENUM_DW_AT.items() if name in _WANTED}

# Form codes (DWARF 5, section 7.5.6).
_ADDR, _BLOCK2, _BLOCK4, _DATA2, _DATA4, _DATA8, _STRING = 0x01, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08
_BLOCK, _BLOCK1, _DATA1, _FLAG, _SDATA, _STRP, _UDATA = 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F
_REF_ADDR, _REF1, _REF2, _REF4, _REF8, _REF_UDATA = 0x10, 0x11, 0x12, 0x13, 0x14, 0x15
_INDIRECT, _SEC_OFFSET, _EXPRLOC, _FLAG_PRESENT, _STRX, _ADDRX = 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B
_REF_SUP4, _STRP_SUP, _DATA16, _LINE_STRP, _REF_SIG8, _IMPLICIT_CONST = (
    0x1C,
    0x1D,
    0x1E,
    0x1F,
    0x20,
    0x21,
)
_LOCLISTX, _RNGLISTX, _REF_SUP8 = 0x22, 0x23, 0x24
_STRX1, _STRX2, _STRX3, _STRX4 = 0x25, 0x26, 0x27, 0x28
_ADDRX1, _ADDRX2, _ADDRX3, _ADDRX4 = 0x29, 0x2A, 0x2B, 0x2C
_GNU_ADDR_INDEX, _GNU_STR_INDEX, _GNU_REF_ALT, _GNU_STRP_ALT = 0x1F01, 0x1F02, 0x1F20, 0x1F21

_FIXED = {
    _DATA1: 1,
    _DATA2: 2,
    _DATA4: 4,
    _DATA8: 8,
    _DATA16: 16,
    _FLAG: 1,
    _REF1: 1,
    _REF2: 2,
    _REF4: 4,
    _REF8: 8,
    _REF_SIG8: 8,
    _REF_SUP4: 4,
    _REF_SUP8: 8,
    _STRX1: 1,
    _STRX2: 2,
    _STRX3: 3,
    _STRX4: 4,
    _ADDRX1: 1,
    _ADDRX2: 2,
    _ADDRX3: 3,
    _ADDRX4: 4,
    _FLAG_PRESENT: 0,
    _IMPLICIT_CONST: 0,
}
_UNIT_REFS = {_REF1, _REF2, _REF4, _REF8}
_BLOCK_WIDTH = {_BLOCK1: 1, _BLOCK2: 2, _BLOCK4: 4, _BLOCK: 0}  # 0: ULEB128 length
_ADDR_INDEXES = {_ADDRX, _ADDRX1, _ADDRX2, _ADDRX3, _ADDRX4, _GNU_ADDR_INDEX}
_STR_INDEXES = {_STRX, _STRX1, _STRX2, _STRX3, _STRX4, _GNU_STR_INDEX}
_INDEXED = _ADDR_INDEXES | _STR_INDEXES | {_LOCLISTX, _RNGLISTX}


class Attr(NamedTuple):
    """One attribute: its DW_FORM name and its decoded value.

    References are absolute .debug_info offsets, strings are str, blocks and
    expressions are bytes, indexed forms (strx, addrx, loclistx, rnglistx)
    are resolved to what they index.
    """

    form: str
    value: Any


class RawDIE:
    """One DIE: offset, tag ("" for the null entry), children flag, attributes."""

    __slots__ = ("attributes", "has_children", "offset", "tag")

    def __init__(
        self, offset: int, tag: str, has_children: bool, attributes: dict[str, Attr]
    ) -> None:
        self.offset = offset
        self.tag = tag
        self.has_children = has_children
        self.attributes = attributes


_Spec = tuple[str | None, int, int | None, int | None]  # name, form, implicit, fixed size
_Abbrev = tuple[str, bool, tuple[_Spec, ...]]


_u32 = struct.Struct("<I").unpack_from
_u64 = struct.Struct("<Q").unpack_from


class SectionData:
    """The bytes of the DWARF sections the index reads, shared by all units."""

    def __init__(self, dwarf: DWARFInfo) -> None:
        def raw(sec: Any) -> bytes:
            return b"" if sec is None else bytes(sec.stream.getvalue())

        self.info = raw(dwarf.debug_info_sec)
        self.abbrev = raw(dwarf.debug_abbrev_sec)
        self.str = raw(dwarf.debug_str_sec)
        self.line_str = raw(dwarf.debug_line_str_sec)
        self.str_offsets = raw(dwarf.debug_str_offsets_sec)
        self.addr = raw(dwarf.debug_addr_sec)
        self.loclists = raw(dwarf.debug_loclists_sec)
        self.rnglists = raw(dwarf.debug_rnglists_sec)
        self.loc = raw(dwarf.debug_loc_sec)  # DWARF 2-4
        self.ranges = raw(dwarf.debug_ranges_sec)  # DWARF 2-4
        self.line = raw(dwarf.debug_line_sec)
        self._strings: dict[tuple[int, int], str] = {}
        self._abbrevs: dict[int, dict[int, _Abbrev]] = {}

    def cstring(self, data: bytes, offset: int) -> str:
        """The NUL-terminated string at offset of a string section (cached)."""
        key = (id(data), offset)
        text = self._strings.get(key)
        if text is None:
            end = data.index(b"\0", offset)
            text = data[offset:end].decode("utf-8", "replace")
            self._strings[key] = text
        return text

    def abbrevs(self, offset: int) -> dict[int, _Abbrev]:
        """The abbreviation table at offset of .debug_abbrev (cached)."""
        table = self._abbrevs.get(offset)
        if table is not None:
            return table
        table = {}
        data = self.abbrev
        pos = offset
        while True:
            code, pos = uleb(data, pos)
            if code == 0:
                break
            tag, pos = uleb(data, pos)
            children = data[pos] != 0
            pos += 1
            specs: list[_Spec] = []
            while True:
                at, pos = uleb(data, pos)
                form, pos = uleb(data, pos)
                if at == 0 and form == 0:
                    break
                implicit = None
                if form == _IMPLICIT_CONST:
                    implicit, pos = sleb(data, pos)
                specs.append((_WANTED_CODES.get(at), form, implicit, _FIXED.get(form)))
            table[code] = (_TAG_NAMES.get(tag, f"DW_TAG_{tag:#x}"), children, tuple(specs))
        self._abbrevs[offset] = table
        return table


class UnitReader:
    """Reads the DIEs of one compilation unit."""

    def __init__(self, sections: SectionData, cu: CompileUnit, top: DIE) -> None:
        self.s = sections
        self.cu_offset: int = cu.cu_offset
        self.addr_size: int = cu["address_size"]
        self.offset_size = 8 if cu.structs.dwarf_format == 64 else 4
        self._offset = _u64 if self.offset_size == 8 else _u32
        self.ref_addr_size = self.offset_size if cu["version"] >= 3 else self.addr_size
        self.abbrevs = sections.abbrevs(cu["debug_abbrev_offset"])
        attrs = top.attributes

        def base(name: str) -> int:
            attr = attrs.get(name)
            return int(attr.value) if attr is not None else 0

        self.addr_base = base("DW_AT_addr_base")
        self.str_offsets_base = base("DW_AT_str_offsets_base") or 8
        self.loclists_base = base("DW_AT_loclists_base")
        self.rnglists_base = base("DW_AT_rnglists_base")

    def addrx(self, index: int) -> int:
        """The address at index of this unit's .debug_addr contribution."""
        return uint(self.s.addr, self.addr_base + index * self.addr_size, self.addr_size)

    def read(self, pos: int) -> tuple[RawDIE, int]:
        """Decode the DIE at pos; return it and the position of the next one."""
        data = self.s.info
        start = pos
        code = data[pos]
        pos += 1
        if code >= 0x80:
            code, pos = uleb(data, start)
        if code == 0:
            return RawDIE(start, "", False, {}), pos
        tag, children, specs = self.abbrevs[code]
        attrs: dict[str, Attr] = {}
        for name, form, implicit, fixed in specs:
            if name is None and fixed is not None:
                pos += fixed
                continue
            if form == _REF4:
                value = self.cu_offset + _u32(data, pos)[0]
                pos += 4
            elif form == _STRP:
                offset = self._offset(data, pos)[0]
                pos += self.offset_size
                if name is None:
                    continue
                value = self.s.cstring(self.s.str, offset)
            elif form == _DATA1:
                value = data[pos]
                pos += 1
            elif form == _FLAG_PRESENT:
                value = True
            elif form == _EXPRLOC:
                size, pos = uleb(data, pos)
                value = data[pos : pos + size]
                pos += size
            elif form == _SEC_OFFSET:
                value = self._offset(data, pos)[0]
                pos += self.offset_size
            elif form == _IMPLICIT_CONST:
                value = implicit
            else:
                value, pos = self._slow(form, pos, implicit)
            if name is not None:
                attrs[name] = Attr(_FORM_NAMES.get(form, str(form)), value)
        return RawDIE(start, tag, children, attrs), pos

    def _slow(self, form: int, pos: int, implicit: int | None) -> tuple[Any, int]:
        """Decode the less common forms."""
        data = self.s.info
        size = _FIXED.get(form, 0)
        if form in _UNIT_REFS:
            return self.cu_offset + uint(data, pos, size), pos + size
        if form in (_DATA2, _DATA4, _DATA8, _DATA16, _REF_SIG8, _REF_SUP4, _REF_SUP8):
            return uint(data, pos, size), pos + size
        if form == _FLAG:
            return data[pos] != 0, pos + 1
        if form == _ADDR:
            return uint(data, pos, self.addr_size), pos + self.addr_size
        if form == _UDATA:
            return uleb(data, pos)
        if form == _SDATA:
            return sleb(data, pos)
        if form == _REF_UDATA:
            value, pos = uleb(data, pos)
            return self.cu_offset + value, pos
        if form == _REF_ADDR:
            return uint(data, pos, self.ref_addr_size), pos + self.ref_addr_size
        if form in (_LINE_STRP, _STRP_SUP, _GNU_REF_ALT, _GNU_STRP_ALT):
            offset = uint(data, pos, self.offset_size)
            pos += self.offset_size
            if form == _LINE_STRP:
                return self.s.cstring(self.s.line_str, offset), pos
            return offset, pos
        if form == _STRING:
            end = data.index(b"\0", pos)
            return data[pos:end].decode("utf-8", "replace"), end + 1
        if form in _BLOCK_WIDTH:
            width = _BLOCK_WIDTH[form]
            if width:
                length = uint(data, pos, width)
                pos += width
            else:
                length, pos = uleb(data, pos)
            return data[pos : pos + length], pos + length
        if form in _INDEXED:
            if size:
                index = uint(data, pos, size)
                pos += size
            else:
                index, pos = uleb(data, pos)
            return self._indexed(form, index), pos
        if form == _INDIRECT:
            real, pos = uleb(data, pos)
            return self._slow(real, pos, implicit)
        raise ValueError(f"unsupported DW_FORM {form:#x} in .debug_info")

    def _indexed(self, form: int, index: int) -> Any:
        """Resolve an index into .debug_str_offsets, .debug_addr or a list table."""
        s = self.s
        if form in _ADDR_INDEXES:
            return self.addrx(index)
        if form in _STR_INDEXES:
            entry = self.str_offsets_base + index * self.offset_size
            return s.cstring(s.str, uint(s.str_offsets, entry, self.offset_size))
        section, base = (
            (s.loclists, self.loclists_base)
            if form == _LOCLISTX
            else (s.rnglists, self.rnglists_base)
        )
        return base + uint(section, base + index * self.offset_size, self.offset_size)
