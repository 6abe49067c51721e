"""Call frame information: parse ``.eh_frame`` / ``.debug_frame`` into a lookup table.

`CallFrameTable.from_elf` decodes every FDE of an ELF file into rows (pc ->
CFA rule and register rules) held in a compact, JSON-serialisable form, so
another module can cache it on disk per build-id and reload it with
`CallFrameTable.from_json` without touching the ELF again.

All addresses here are link-time addresses (as in the ELF file). When
unwinding, the caller subtracts the module's load bias before calling
`CallFrameTable.row_at`, and, for every frame whose pc is a return address
(all but the innermost frame and the frame interrupted by a signal), looks up
``return address - 1``: the call may be the last instruction of a function, so
the return address can belong to the next function or row.

The parser is our own: pyelftools' CFI decoder raises on some libc FDEs. An
FDE that cannot be decoded (unknown CFA opcode, unusual pointer encoding) is
skipped on its own and counted in `CallFrameTable.skipped_fdes`.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from enum import StrEnum
from os import PathLike
from typing import Any

from elftools.elf.elffile import ELFFile

from ekiden_trace.binary.dwarf.leb128 import sleb, uleb

__all__ = ["CallFrameTable", "CfaRule", "CfiError", "CfiRow", "RegRule", "RuleKind"]

_JSON_FORMAT = "ekiden-cfi/1"


class CfiError(Exception):
    """Malformed call frame information."""


class RuleKind(StrEnum):
    """How a register of the caller is recovered (DWARF 5, section 6.4.1)."""

    UNDEFINED = "undefined"
    SAME_VALUE = "same_value"
    OFFSET = "offset"  # saved at address CFA + arg
    VAL_OFFSET = "val_offset"  # value is CFA + arg
    REGISTER = "register"  # value is in register arg
    EXPRESSION = "expression"  # saved at the address the expression computes
    VAL_EXPRESSION = "val_expression"  # value is what the expression computes


_EXPR_KINDS = (RuleKind.EXPRESSION, RuleKind.VAL_EXPRESSION)


@dataclass(frozen=True, slots=True)
class CfaRule:
    """The CFA is ``regno + offset``, or (when `expr` is set) the address `expr` computes."""

    regno: int | None
    offset: int
    expr: bytes | None = None


@dataclass(frozen=True, slots=True)
class RegRule:
    """One register rule: `arg` is an offset, a register number or expression bytes."""

    kind: RuleKind
    arg: int | bytes | None = None


@dataclass(frozen=True, slots=True)
class CfiRow:
    """The unwind rules valid for link-time pcs ``[pc, end)``.

    Registers absent from `regs` have no rule in the CFI; on x86-64 the
    unwinder treats callee-saved ones as same-value and others as lost.
    """

    pc: int
    end: int
    cfa: CfaRule
    regs: dict[int, RegRule]
    ra_regno: int
    is_signal_frame: bool


# The compact form, the same in memory and in JSON, so that from_json costs nothing
# and rows are decoded only for the FDE being looked up:
#   fde  = [begin, end, ra_regno, is_signal (0/1), rows]
#   rows = row (";" row)*                     rows in increasing pc order
#   row  = pc_offset_hex "|" cfa ("|" rule)*  pc_offset from the FDE's begin
#   cfa  = regno "," offset | "x" hex_expression
#   rule = regno code [arg]                   codes below; arg: decimal or hex expression
_Fde = list[Any]
_CODES: dict[RuleKind, str] = {
    RuleKind.UNDEFINED: "u",
    RuleKind.SAME_VALUE: "s",
    RuleKind.OFFSET: "o",
    RuleKind.VAL_OFFSET: "v",
    RuleKind.REGISTER: "r",
    RuleKind.EXPRESSION: "e",
    RuleKind.VAL_EXPRESSION: "E",
}
_KINDS: dict[str, RuleKind] = {code: kind for kind, code in _CODES.items()}
_RULE_RE = re.compile(r"(\d+)([usovreE])(.*)")


@dataclass(slots=True)
class _Cie:
    code_align: int
    data_align: int
    ra_regno: int
    fde_encoding: int
    has_z: bool
    is_signal: bool
    address_size: int
    program_start: int  # initial instructions, as section offsets
    program_end: int


class _Reader:
    """Decoding helpers over one section's bytes, at link-time address `base`."""

    def __init__(self, data: bytes, base: int, is_eh: bool) -> None:
        self.data = data
        self.base = base
        self.is_eh = is_eh

    def u(self, pos: int, size: int) -> int:
        if pos + size > len(self.data):
            raise CfiError("CFI entry runs past the end of its section")
        return int.from_bytes(self.data[pos : pos + size], "little")

    def encoded(self, pos: int, enc: int) -> tuple[int, int]:
        """Decode a pointer in encoding `enc` (DW_EH_PE_*); return (value, next pos)."""
        fmt = enc & 0x0F
        app = enc & 0x70
        start = pos
        if fmt == 0x00:  # absptr
            value, pos = self.u(pos, 8), pos + 8
        elif fmt == 0x01:
            value, pos = uleb(self.data, pos)
        elif fmt in (0x02, 0x03, 0x04):
            size = 1 << (fmt - 1)
            value, pos = self.u(pos, size), pos + size
        elif fmt == 0x09:
            value, pos = sleb(self.data, pos)
        elif fmt in (0x0A, 0x0B, 0x0C):
            size = 1 << (fmt - 9)
            value, pos = self.u(pos, size), pos + size
            if value >> (8 * size - 1):
                value -= 1 << (8 * size)
        else:
            raise CfiError(f"unknown pointer encoding 0x{enc:02x}")
        if app == 0x10:  # pcrel
            value += self.base + start
        elif app != 0:
            raise CfiError(f"unsupported pointer application 0x{enc:02x}")
        return value & ((1 << 64) - 1), pos

    def skip_encoded(self, pos: int, enc: int) -> int:
        """Skip a pointer in encoding `enc`; return the next position."""
        return self.encoded(pos, enc & 0x0F)[1]


class CallFrameTable:
    """Every FDE of one ELF file, sorted by start address, with its rows."""

    def __init__(self, fdes: list[_Fde], skipped_fdes: int = 0) -> None:
        self._fdes = sorted(fdes, key=lambda fde: fde[0])
        self._begins = [fde[0] for fde in self._fdes]
        self.skipped_fdes = skipped_fdes

    def __len__(self) -> int:
        return len(self._fdes)

    @classmethod
    def from_elf(cls, path: str | PathLike[str]) -> CallFrameTable:
        """Parse ``.eh_frame`` and ``.debug_frame`` of the ELF file at `path`.

        Where both describe a pc, ``.eh_frame`` wins.
        """
        with open(path, "rb") as stream:
            elf = ELFFile(stream)
            sections = []
            for name in (".eh_frame", ".debug_frame"):
                section = elf.get_section_by_name(name)
                if section is not None and section["sh_type"] != "SHT_NOBITS":
                    sections.append((section.data(), section["sh_addr"], name == ".eh_frame"))
        fdes: list[_Fde] = []
        skipped = 0
        for data, addr, is_eh in sections:
            found, bad = _parse_section(_Reader(data, addr, is_eh))
            if fdes:  # .debug_frame: only what .eh_frame did not cover
                covered = CallFrameTable(fdes)
                found = [fde for fde in found if covered.row_at(fde[0]) is None]
            fdes += found
            skipped += bad
        return cls(fdes, skipped)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form (shares structure with the table; do not mutate)."""
        return {"format": _JSON_FORMAT, "skipped_fdes": self.skipped_fdes, "fdes": self._fdes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallFrameTable:
        """Rebuild a table from `to_json` output (after a JSON round trip or not)."""
        if data.get("format") != _JSON_FORMAT:
            raise CfiError(f"not an {_JSON_FORMAT} table: {data.get('format')!r}")
        return cls(data["fdes"], data["skipped_fdes"])

    def row_at(self, pc: int) -> CfiRow | None:
        """The row for link-time address `pc`, or None when no FDE covers it.

        For a frame whose pc is a return address, pass ``pc - 1`` (see module doc).
        """
        i = bisect.bisect_right(self._begins, pc) - 1
        if i < 0:
            return None
        begin, end, ra_regno, is_signal, encoded = self._fdes[i]
        if pc >= end:
            return None
        rows = encoded.split(";")
        starts = [begin + int(row.partition("|")[0], 16) for row in rows]
        j = bisect.bisect_right(starts, pc) - 1
        row_end = starts[j + 1] if j + 1 < len(starts) else end
        _, cfa, *rules = rows[j].split("|")
        if cfa.startswith("x"):
            cfa_rule = CfaRule(None, 0, bytes.fromhex(cfa[1:]))
        else:
            regno, offset = cfa.split(",")
            cfa_rule = CfaRule(int(regno), int(offset))
        regs = {}
        for rule in rules:
            match = _RULE_RE.fullmatch(rule)
            if match is None:
                raise CfiError(f"bad encoded CFI rule {rule!r}")
            kind = _KINDS[match[2]]
            arg: int | bytes | None = None
            if kind in _EXPR_KINDS:
                arg = bytes.fromhex(match[3])
            elif match[3]:
                arg = int(match[3])
            regs[int(match[1])] = RegRule(kind, arg)
        return CfiRow(starts[j], row_end, cfa_rule, regs, ra_regno, bool(is_signal))


def _parse_section(reader: _Reader) -> tuple[list[_Fde], int]:
    """All FDEs of one section, and how many were skipped as undecodable."""
    cies: dict[int, _Cie] = {}
    fdes: list[_Fde] = []
    skipped = 0
    pos = 0
    while pos + 4 <= len(reader.data):
        try:
            body, end, id_size = _entry_bounds(reader, pos)
            if body == end:
                if reader.is_eh:
                    break  # zero length: terminator
                pos = end
                continue
            if end > len(reader.data):
                raise CfiError("CFI entry runs past the end of its section")
            cie_id = reader.u(body, id_size)
        except CfiError:
            return fdes, skipped + 1  # a broken length: the rest cannot be framed
        if reader.is_eh:
            is_cie, cie_offset = cie_id == 0, body - cie_id
        else:
            is_cie, cie_offset = cie_id == (1 << (8 * id_size)) - 1, cie_id
        if not is_cie:
            try:
                cie = cies.get(cie_offset)
                if cie is None:
                    cie = cies[cie_offset] = _parse_cie(reader, cie_offset)
                fde = _parse_fde(reader, cie, body + id_size, end)
            except (CfiError, IndexError, ValueError):
                skipped += 1
            else:
                if fde is not None:
                    fdes.append(fde)
        pos = end
    return fdes, skipped


def _entry_bounds(reader: _Reader, pos: int) -> tuple[int, int, int]:
    """For the CIE/FDE at `pos`: (start of its id field, its end, size of the id field)."""
    length = reader.u(pos, 4)
    pos += 4
    id_size = 4
    if length == 0xFFFFFFFF:
        length = reader.u(pos, 8)
        pos += 8
        if not reader.is_eh:
            id_size = 8
    return pos, pos + length, id_size


def _parse_cie(reader: _Reader, offset: int) -> _Cie:
    """Parse the CIE at section offset `offset`."""
    data = reader.data
    body, end, id_size = _entry_bounds(reader, offset)
    pos = body + id_size
    version = data[pos]
    pos += 1
    aug_end = data.index(b"\0", pos)
    augmentation = data[pos:aug_end].decode("ascii")
    pos = aug_end + 1
    address_size = 8
    if augmentation.startswith("eh"):
        pos += 8
    if not reader.is_eh and version >= 4:
        address_size = data[pos]
        pos += 2  # address_size, segment_selector_size
    code_align, pos = uleb(data, pos)
    data_align, pos = sleb(data, pos)
    if version == 1:
        ra_regno = data[pos]
        pos += 1
    else:
        ra_regno, pos = uleb(data, pos)
    fde_encoding = 0x00 if reader.is_eh else {8: 0x04, 4: 0x03}.get(address_size, 0x04)
    is_signal = False
    has_z = augmentation.startswith("z")
    if has_z:
        aug_len, pos = uleb(data, pos)
        aug_data_end = pos + aug_len
        for char in augmentation[1:]:
            if char == "R":
                fde_encoding = data[pos]
                pos += 1
            elif char == "L":
                pos += 1
            elif char == "P":
                pos = reader.skip_encoded(pos + 1, data[pos])
            elif char == "S":
                is_signal = True
            elif char not in "BG":
                break  # unknown letter: the rest is skipped by its length
        pos = aug_data_end
    elif augmentation not in ("", "eh"):
        raise CfiError(f"unknown CIE augmentation {augmentation!r}")
    return _Cie(
        code_align, data_align, ra_regno, fde_encoding, has_z, is_signal, address_size, pos, end
    )


def _parse_fde(reader: _Reader, cie: _Cie, pos: int, end: int) -> _Fde | None:
    begin, pos = reader.encoded(pos, cie.fde_encoding)
    size, pos = reader.encoded(pos, cie.fde_encoding & 0x0F)
    if size == 0:
        return None
    if cie.has_z:
        aug_len, pos = uleb(reader.data, pos)
        pos += aug_len
    rows = _run_program(reader, cie, begin, pos, end)
    return [begin, begin + size, cie.ra_regno, int(cie.is_signal), ";".join(rows)]


class _State:
    """The current row while a CFA program runs: CFA as (regno, offset) or encoded
    expression, register rules already encoded."""

    __slots__ = ("cfa", "regs")

    def __init__(self, cfa: tuple[int, int] | str, regs: dict[int, str]) -> None:
        self.cfa = cfa
        self.regs = regs

    def copy(self) -> _State:
        return _State(self.cfa, dict(self.regs))


def _run_program(reader: _Reader, cie: _Cie, begin: int, start: int, end: int) -> list[str]:
    """Execute the CIE's initial instructions then the FDE's (at `start`..`end`)."""
    state = _State((7, 8), {})
    _execute(reader, cie, cie.program_start, cie.program_end, state, None, begin, None)
    initial = state.copy()
    rows: _Rows = _Rows(begin)
    _execute(reader, cie, start, end, state, initial, begin, rows)
    return rows.encoded


class _Rows:
    """Encoded rows of one FDE, merging consecutive rows with equal rules."""

    __slots__ = ("begin", "encoded", "last")

    def __init__(self, begin: int) -> None:
        self.begin = begin
        self.encoded: list[str] = []
        self.last = ""

    def close(self, loc: int, state: _State) -> None:
        """Record the rules of `state` as valid from `loc` on."""
        cfa = state.cfa if isinstance(state.cfa, str) else f"{state.cfa[0]},{state.cfa[1]}"
        rules = "|".join([cfa, *(state.regs[regno] for regno in sorted(state.regs))])
        if rules != self.last:
            self.encoded.append(f"{loc - self.begin:x}|{rules}")
            self.last = rules


def _execute(
    reader: _Reader,
    cie: _Cie,
    pos: int,
    end: int,
    state: _State,
    initial: _State | None,
    loc: int,
    rows: _Rows | None,
) -> None:
    """Run one CFA instruction stream on `state`, appending rows when `rows` is given."""
    data_align = cie.data_align
    code_align = cie.code_align
    program = reader.data
    stack: list[_State] = []
    while pos < end:
        op = program[pos]
        pos += 1
        high = op & 0xC0
        low = op & 0x3F
        advance = 0
        if high == 0x40:  # advance_loc
            advance = low * code_align
        elif high == 0x80:  # offset
            off, pos = uleb(program, pos)
            state.regs[low] = f"{low}o{off * data_align}"
        elif high == 0xC0:  # restore
            _restore(state, initial, low)
        elif op == 0x00:  # nop
            pass
        elif op == 0x01:  # set_loc
            if reader.is_eh:
                new_loc, pos = reader.encoded(pos, cie.fde_encoding)
            else:
                new_loc, pos = reader.u(pos, cie.address_size), pos + cie.address_size
            advance = new_loc - loc
            if advance < 0:
                raise CfiError("DW_CFA_set_loc moves backwards")
        elif op in (0x02, 0x03, 0x04):  # advance_loc1/2/4
            size = 1 << (op - 2)
            advance = reader.u(pos, size) * code_align
            pos += size
        elif op in (0x05, 0x11, 0x14, 0x15, 0x2F):
            # offset_extended, offset_extended_sf, val_offset, val_offset_sf,
            # GNU_negative_offset_extended
            regno, pos = uleb(program, pos)
            if op in (0x11, 0x15):
                off, pos = sleb(program, pos)
            else:
                off, pos = uleb(program, pos)
            if op == 0x2F:
                off = -off
            code = "v" if op in (0x14, 0x15) else "o"
            state.regs[regno] = f"{regno}{code}{off * data_align}"
        elif op == 0x06:  # restore_extended
            regno, pos = uleb(program, pos)
            _restore(state, initial, regno)
        elif op in (0x07, 0x08):  # undefined, same_value
            regno, pos = uleb(program, pos)
            state.regs[regno] = f"{regno}{'u' if op == 0x07 else 's'}"
        elif op == 0x09:  # register
            regno, pos = uleb(program, pos)
            other, pos = uleb(program, pos)
            state.regs[regno] = f"{regno}r{other}"
        elif op == 0x0A:  # remember_state
            stack.append(state.copy())
        elif op == 0x0B:  # restore_state
            if not stack:
                raise CfiError("DW_CFA_restore_state without remember_state")
            saved = stack.pop()
            state.cfa, state.regs = saved.cfa, saved.regs
        elif op in (0x0C, 0x12):  # def_cfa, def_cfa_sf
            regno, pos = uleb(program, pos)
            if op == 0x0C:
                off, pos = uleb(program, pos)
            else:
                off, pos = sleb(program, pos)
                off *= data_align
            state.cfa = (regno, off)
        elif op == 0x0D:  # def_cfa_register
            regno, pos = uleb(program, pos)
            state.cfa = (regno, _cfa_offset(state))
        elif op in (0x0E, 0x13):  # def_cfa_offset, def_cfa_offset_sf
            if op == 0x0E:
                off, pos = uleb(program, pos)
            else:
                off, pos = sleb(program, pos)
                off *= data_align
            state.cfa = (_cfa_register(state), off)
        elif op == 0x0F:  # def_cfa_expression
            size, pos = uleb(program, pos)
            state.cfa = "x" + program[pos : pos + size].hex()
            pos += size
        elif op in (0x10, 0x16):  # expression, val_expression
            regno, pos = uleb(program, pos)
            size, pos = uleb(program, pos)
            code = "e" if op == 0x10 else "E"
            state.regs[regno] = f"{regno}{code}{program[pos : pos + size].hex()}"
            pos += size
        elif op == 0x2E:  # GNU_args_size: only matters to exception handling
            _, pos = uleb(program, pos)
        else:
            raise CfiError(f"unknown CFA instruction 0x{op:02x}")
        if advance:
            if rows is None:
                raise CfiError("CIE initial instructions advance the location")
            rows.close(loc, state)
            loc += advance
    if pos > end:
        raise CfiError("CFA instruction runs past the end of its entry")
    if rows is not None:
        rows.close(loc, state)


def _restore(state: _State, initial: _State | None, regno: int) -> None:
    if initial is None:
        raise CfiError("DW_CFA_restore in CIE initial instructions")
    rule = initial.regs.get(regno)
    if rule is None:
        state.regs.pop(regno, None)
    else:
        state.regs[regno] = rule


def _cfa_register(state: _State) -> int:
    if isinstance(state.cfa, str):
        raise CfiError("DW_CFA_def_cfa_offset after DW_CFA_def_cfa_expression")
    return state.cfa[0]


def _cfa_offset(state: _State) -> int:
    if isinstance(state.cfa, str):
        raise CfiError("DW_CFA_def_cfa_register after DW_CFA_def_cfa_expression")
    return state.cfa[1]
