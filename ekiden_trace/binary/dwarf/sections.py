"""Raw decoders for the DWARF sections pyelftools leaves slow or incomplete.

Range lists (.debug_rnglists, .debug_ranges), location lists
(.debug_loclists, .debug_loc) and line-number programs are decoded straight
from the section bytes.  All addresses are link-time addresses with the base
address applied (pyelftools leaves offset pairs relative to it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ekiden_trace.binary.dwarf.leb128 import sleb, uleb

MAX_ADDR = (1 << 64) - 1

AddrIndex = Callable[[int], int]
"""Maps a .debug_addr index (DW_FORM_addrx, DW_LLE_startx_*, ...) to an address."""


def uint(data: bytes, pos: int, size: int) -> int:
    """The little-endian unsigned integer of size bytes at pos."""
    return int.from_bytes(data[pos : pos + size], "little")


# DWARF 5 range and location list entry codes (DW_RLE_*, DW_LLE_*): the same
# entries, numbered differently from 5 on.
RLE_KINDS = (
    "end",
    "base_addressx",
    "startx_endx",
    "startx_length",
    "offset_pair",
    "base_address",
    "start_end",
    "start_length",
)
LLE_KINDS = (
    "end",
    "base_addressx",
    "startx_endx",
    "startx_length",
    "offset_pair",
    "default_location",
    "base_address",
    "start_end",
    "start_length",
    "GNU_view_pair",
)


def _list_entries(
    data: bytes, pos: int, base: int, addrx: AddrIndex, kinds: tuple[str, ...]
) -> Iterator[tuple[str, int, int, str]]:
    """(kind, lo, hi, expression in hex) of each address-bearing entry of a DWARF 5 list
    (location lists carry an expression, range lists do not: ""); base address entries
    and location views are applied or skipped here."""
    while True:
        code = data[pos]
        pos += 1
        if code >= len(kinds):
            raise ValueError(f"unknown range or location list code {code:#x}")
        kind = kinds[code]
        if kind == "end":
            return
        if kind == "base_addressx":
            idx, pos = uleb(data, pos)
            base = addrx(idx)
            continue
        if kind == "base_address":
            base, pos = uint(data, pos, 8), pos + 8
            continue
        if kind == "GNU_view_pair":  # location views, not addresses
            _, pos = uleb(data, pos)
            _, pos = uleb(data, pos)
            continue
        if kind == "startx_endx":
            a, pos = uleb(data, pos)
            b, pos = uleb(data, pos)
            lo, hi = addrx(a), addrx(b)
        elif kind == "startx_length":
            a, pos = uleb(data, pos)
            length, pos = uleb(data, pos)
            lo = addrx(a)
            hi = lo + length
        elif kind == "offset_pair":
            a, pos = uleb(data, pos)
            b, pos = uleb(data, pos)
            lo, hi = base + a, base + b
        elif kind == "default_location":
            lo, hi = 0, MAX_ADDR
        elif kind == "start_end":
            lo, hi, pos = uint(data, pos, 8), uint(data, pos + 8, 8), pos + 16
        else:  # start_length
            lo = uint(data, pos, 8)
            length, pos = uleb(data, pos + 8)
            hi = lo + length
        expr = ""
        if kinds is LLE_KINDS:
            size, pos = uleb(data, pos)
            expr, pos = data[pos : pos + size].hex(), pos + size
        yield kind, lo, hi, expr


def read_rnglist(data: bytes, pos: int, base: int, addrx: AddrIndex) -> list[list[int]]:
    """Decode a DWARF 5 range list at pos into [[lo, hi], ...]."""
    return [
        [lo, hi] for _, lo, hi, _ in _list_entries(data, pos, base, addrx, RLE_KINDS) if lo < hi
    ]


def read_ranges_v4(data: bytes, pos: int, base: int) -> list[list[int]]:
    """Decode a DWARF 2-4 .debug_ranges list at pos into [[lo, hi], ...]."""
    out: list[list[int]] = []
    while True:
        lo, hi = uint(data, pos, 8), uint(data, pos + 8, 8)
        pos += 16
        if lo == 0 and hi == 0:
            return out
        if lo == MAX_ADDR:
            base = hi
        elif lo < hi:
            out.append([base + lo, base + hi])


def read_loclist(data: bytes, pos: int, base: int, addrx: AddrIndex) -> list[list[int | str]]:
    """Decode a DWARF 5 location list at pos into [[lo, hi, expr_hex], ...].

    A default location (DW_LLE_default_location) comes last, covering every
    address; consumers take the first entry that contains the pc.
    """
    out: list[list[int | str]] = []
    default: list[int | str] | None = None
    for kind, lo, hi, expr in _list_entries(data, pos, base, addrx, LLE_KINDS):
        if kind == "default_location":
            default = [lo, hi, expr]
        elif lo < hi:
            out.append([lo, hi, expr])
    if default is not None:
        out.append(default)
    return out


def read_loc_v4(data: bytes, pos: int, base: int) -> list[list[int | str]]:
    """Decode a DWARF 2-4 .debug_loc list at pos into [[lo, hi, expr_hex], ...]."""
    out: list[list[int | str]] = []
    while True:
        lo, hi = uint(data, pos, 8), uint(data, pos + 8, 8)
        pos += 16
        if lo == 0 and hi == 0:
            return out
        if lo == MAX_ADDR:
            base = hi
            continue
        size = uint(data, pos, 2)
        pos += 2
        if lo < hi:
            out.append([base + lo, base + hi, data[pos : pos + size].hex()])
        pos += size


@dataclass
class LineHeader:
    """The parts of a line-program header the row decoder needs."""

    min_inst_length: int
    line_base: int
    line_range: int
    opcode_base: int
    standard_opcode_lengths: list[int]


Sequence = list[tuple[int, int, int]]
"""Rows (address, file index, line) of one sequence; the last row ends it (line 0)."""


def read_line_rows(data: bytes, start: int, end: int, hdr: LineHeader) -> list[Sequence]:
    """Run a line-number program; return its sequences of (address, file, line) rows.

    Each sequence's last row is its end address with line 0.  Rows at the same
    address are kept in program order (later rows win on lookup).
    """
    sequences: list[Sequence] = []
    rows: Sequence = []
    address, file, line = 0, 1, 1
    pos = start
    opcode_base = hdr.opcode_base
    line_base = hdr.line_base
    line_range = hdr.line_range
    min_len = hdr.min_inst_length
    lengths = hdr.standard_opcode_lengths
    while pos < end:
        op = data[pos]
        pos += 1
        if op >= opcode_base:
            adjusted = op - opcode_base
            address += (adjusted // line_range) * min_len
            line += line_base + adjusted % line_range
            rows.append((address, file, line))
        elif op == 0:
            size, pos = uleb(data, pos)
            sub = data[pos]
            if sub == 1:  # DW_LNE_end_sequence
                rows.append((address, file, 0))
                sequences.append(rows)
                rows = []
                address, file, line = 0, 1, 1
            elif sub == 2:  # DW_LNE_set_address
                address = uint(data, pos + 1, size - 1)
            pos += size
        elif op == 1:  # copy
            rows.append((address, file, line))
        elif op == 2:  # advance_pc
            delta, pos = uleb(data, pos)
            address += delta * min_len
        elif op == 3:  # advance_line
            delta, pos = sleb(data, pos)
            line += delta
        elif op == 4:  # set_file
            file, pos = uleb(data, pos)
        elif op == 8:  # const_add_pc
            address += ((255 - opcode_base) // line_range) * min_len
        elif op == 9:  # fixed_advance_pc
            address += uint(data, pos, 2)
            pos += 2
        else:  # set_column, negate_stmt, prologue_end, set_isa, ...: operands only
            for _ in range(lengths[op - 1]):
                _, pos = uleb(data, pos)
    return sequences
