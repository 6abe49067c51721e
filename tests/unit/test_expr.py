"""DWARF expression evaluation: hand-assembled expressions and ones gcc emitted."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from ptrace.binding.linux_struct import user_regs_struct

from ekiden_trace.binary.dwarf.expr import (
    DWARF_REG_NAMES,
    DWARF_REGS,
    ExprContext,
    ExprError,
    MemoryLocation,
    PieceLocation,
    RegisterLocation,
    Unsupported,
    ValueLocation,
    ValueUnknown,
    evaluate,
    regs_to_dwarf,
)
from ekiden_trace.binary.dwarf.leb128 import sleb as read_sleb128
from ekiden_trace.binary.dwarf.leb128 import uleb as read_uleb128

MASK = (1 << 64) - 1

# A few opcodes, named for readability.
ADDR, DEREF, CONST1U, CONST1S, CONST2S, CONST4U, CONST8S = 0x03, 0x06, 0x08, 0x09, 0x0B, 0x0C, 0x0F
CONSTU, CONSTS, DUP, DROP, OVER, PICK, SWAP = 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16
AND, MINUS, MUL, NEG, NOT, OR, PLUS, PLUS_UCONST = 0x1A, 0x1C, 0x1E, 0x1F, 0x20, 0x21, 0x22, 0x23
SHL, SHR, SHRA, XOR, BRA, EQ, GE, GT, LE, LT, NE, SKIP = range(0x24, 0x30)
LIT0, REG0, BREG0, REGX, FBREG, BREGX, PIECE = 0x30, 0x50, 0x70, 0x90, 0x91, 0x92, 0x93
DEREF_SIZE, NOP, CALL_FRAME_CFA, IMPLICIT_VALUE, STACK_VALUE = 0x94, 0x96, 0x9C, 0x9E, 0x9F
ADDRX, ENTRY_VALUE = 0xA1, 0xA3
GNU_ENTRY_VALUE, IMPLICIT_POINTER = 0xF3, 0xA0


def uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


MEMORY = {0x1000: 0x1122334455667788, 0x2000: 0x1000, 0x3008: 0xDEAD}
REGS = {0: 5, 6: 0x3000, 7: 0x2008, 16: 0x401000}


def make_ctx(**kwargs: object) -> ExprContext:
    def read_word(addr: int) -> int:
        if addr not in MEMORY:
            raise OSError(f"unmapped {addr:#x}")
        return MEMORY[addr]

    return ExprContext(regs=REGS, read_word=read_word, **kwargs)


def value_of(expr: bytes, **kwargs: object) -> int:
    """Evaluate `expr` + DW_OP_stack_value; return the integer result."""
    loc = evaluate(expr + bytes([STACK_VALUE]), make_ctx(**kwargs))
    assert isinstance(loc, ValueLocation) and isinstance(loc.value, int)
    return loc.value


@pytest.mark.parametrize("value", [0, 1, 63, 64, 127, 128, 300, 2**32, 2**63, 2**64 - 1])
def test_uleb128(value: int) -> None:
    assert read_uleb128(b"\xff" + uleb(value) + b"\x00", 1) == (value, 1 + len(uleb(value)))


@pytest.mark.parametrize("value", [0, 1, -1, 63, 64, -64, -65, 127, -128, 2**40, -(2**63)])
def test_sleb128(value: int) -> None:
    assert read_sleb128(sleb(value), 0) == (value, len(sleb(value)))


def test_register_maps() -> None:
    assert DWARF_REGS["rax"] == 0 and DWARF_REGS["rdx"] == 1 and DWARF_REGS["rcx"] == 2
    assert DWARF_REGS["rbx"] == 3 and DWARF_REGS["rsi"] == 4 and DWARF_REGS["rdi"] == 5
    assert DWARF_REGS["rbp"] == 6 and DWARF_REGS["rsp"] == 7 and DWARF_REGS["r15"] == 15
    assert DWARF_REGS["rip"] == 16
    assert all(DWARF_REGS[name] == num for num, name in DWARF_REG_NAMES.items())


def test_regs_to_dwarf() -> None:
    user = user_regs_struct()
    for num in range(17):
        setattr(user, DWARF_REG_NAMES[num], 0x100 + num)
    user.rax = (-4) & MASK  # a negative syscall return stays a 64-bit unsigned value
    regs = regs_to_dwarf(user)
    assert regs[0] == MASK - 3
    assert regs[3] == user.rbx == 0x103 and regs[7] == user.rsp and regs[16] == user.rip
    assert sorted(regs) == list(range(17))


def test_memory_locations() -> None:
    ctx = make_ctx(load_bias=0x5550000, frame_base=0x7000, cfa=0x9000)
    assert evaluate(bytes([ADDR]) + struct.pack("<Q", 0x4010), ctx) == MemoryLocation(0x5554010)
    assert evaluate(bytes([FBREG]) + sleb(-24), ctx) == MemoryLocation(0x7000 - 24)
    assert evaluate(bytes([BREG0 + 7]) + sleb(-8), ctx) == MemoryLocation(0x2000)
    assert evaluate(bytes([BREGX]) + uleb(6) + sleb(8), ctx) == MemoryLocation(0x3008)
    assert evaluate(bytes([CALL_FRAME_CFA]), ctx) == MemoryLocation(0x9000)
    # A pointer variable's target: *(rsp - 8) + 16
    deref = bytes([BREG0 + 7]) + sleb(-8) + bytes([DEREF, PLUS_UCONST]) + uleb(16)
    assert evaluate(deref, ctx) == MemoryLocation(0x1010)
    # CFI expressions start with the CFA pushed.
    cfi = make_ctx(initial_stack=(0x3000,))
    assert evaluate(bytes([LIT0 + 8, PLUS]), cfi) == MemoryLocation(0x3008)


def test_addrx() -> None:
    table = {0: 0x4000, 3: 0x4040}
    expr = bytes([ADDRX]) + uleb(3)
    assert evaluate(expr, make_ctx(load_bias=0x100, addrx=table.__getitem__)) == MemoryLocation(
        0x4140
    )
    with pytest.raises(Unsupported, match="DW_OP_addrx"):
        evaluate(expr, make_ctx())


def test_register_and_value_locations() -> None:
    ctx = make_ctx()
    assert evaluate(bytes([REG0 + 3]), ctx) == RegisterLocation(3)
    assert evaluate(bytes([REGX]) + uleb(17), ctx) == RegisterLocation(17)
    assert evaluate(bytes([BREG0, 0, STACK_VALUE]), ctx) == ValueLocation(5)
    implicit = evaluate(bytes([IMPLICIT_VALUE]) + uleb(4) + b"\x01\x02\x03\x04", ctx)
    assert implicit == ValueLocation(b"\x01\x02\x03\x04")
    assert isinstance(implicit, ValueLocation)
    assert implicit.as_bytes(2) == b"\x01\x02" and implicit.as_bytes(6) == b"\x01\x02\x03\x04\0\0"
    assert ValueLocation(MASK).as_bytes(4) == b"\xff" * 4
    with pytest.raises(ExprError):
        evaluate(bytes([REG0, LIT0]), ctx)  # only a piece may follow a register


def test_pieces() -> None:
    expr = (
        bytes([REG0 + 3, PIECE])
        + uleb(4)
        + bytes([PIECE])  # nothing: optimized-out piece
        + uleb(2)
        + bytes([BREG0 + 6])
        + sleb(8)
        + bytes([PIECE])
        + uleb(8)
        + bytes([LIT0 + 7, STACK_VALUE, PIECE])
        + uleb(1)
    )
    assert evaluate(expr, make_ctx()) == PieceLocation(
        [
            (RegisterLocation(3), 4),
            (None, 2),
            (MemoryLocation(0x3008), 8),
            (ValueLocation(7), 1),
        ]
    )


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (bytes([CONST1U, 0xFF]), 0xFF),
        (bytes([CONST1S, 0xFF]), MASK),
        (bytes([CONST2S]) + struct.pack("<h", -300), (-300) & MASK),
        (bytes([CONST4U]) + struct.pack("<I", 0xDEADBEEF), 0xDEADBEEF),
        (bytes([CONST8S]) + struct.pack("<q", -2), MASK - 1),
        (bytes([CONSTU]) + uleb(1000), 1000),
        (bytes([CONSTS]) + sleb(-1000), (-1000) & MASK),
        (bytes([LIT0 + 31]), 31),
        (bytes([LIT0 + 9, LIT0 + 4, MINUS]), 5),
        (bytes([LIT0 + 4, LIT0 + 9, MINUS]), MASK - 4),
        (bytes([LIT0 + 6, LIT0 + 7, MUL]), 42),
        (bytes([LIT0 + 12, LIT0 + 10, AND]), 8),
        (bytes([LIT0 + 12, LIT0 + 10, OR]), 14),
        (bytes([LIT0 + 12, LIT0 + 10, XOR]), 6),
        (bytes([LIT0 + 1, LIT0 + 4, SHL]), 16),
        (bytes([LIT0 + 1, CONST1U, 64, SHL]), 0),
        (bytes([CONSTS]) + sleb(-16) + bytes([LIT0 + 2, SHR]), ((-16) & MASK) >> 2),
        (bytes([CONSTS]) + sleb(-16) + bytes([LIT0 + 2, SHRA]), (-4) & MASK),
        (bytes([LIT0 + 5, NEG]), (-5) & MASK),
        (bytes([LIT0, NOT]), MASK),
        (bytes([LIT0 + 3, DUP, PLUS]), 6),
        (bytes([LIT0 + 3, LIT0 + 4, DROP]), 3),
        (bytes([LIT0 + 3, LIT0 + 4, SWAP, MINUS]), 1),
        (bytes([LIT0 + 3, LIT0 + 4, OVER, PLUS, PLUS]), 10),
        (bytes([LIT0 + 1, LIT0 + 2, LIT0 + 3, PICK, 2]), 1),
        (bytes([CONSTS]) + sleb(-1) + bytes([LIT0 + 1, LT]), 1),  # comparisons are signed
        (bytes([CONSTS]) + sleb(-1) + bytes([LIT0 + 1, GT]), 0),
        (bytes([LIT0 + 2, LIT0 + 2, EQ]), 1),
        (bytes([LIT0 + 2, LIT0 + 2, NE]), 0),
        (bytes([LIT0 + 2, LIT0 + 3, LE]), 1),
        (bytes([LIT0 + 2, LIT0 + 3, GE]), 0),
        (bytes([CONST4U]) + struct.pack("<I", 0x1000) + bytes([DEREF]), 0x1122334455667788),
        (bytes([CONST4U]) + struct.pack("<I", 0x1000) + bytes([DEREF_SIZE, 2]), 0x7788),
        (bytes([NOP, LIT0 + 1, NOP]), 1),
    ],
)
def test_arithmetic(expr: bytes, expected: int) -> None:
    assert value_of(expr) == expected


def test_branches() -> None:
    # if (reg0 == 5) push 100 else push 200
    then_part = bytes([CONST1U, 100])
    else_part = bytes([CONST1U, 200, SKIP]) + struct.pack("<h", len(then_part))
    expr = (
        bytes([BREG0, 0, LIT0 + 5, EQ, BRA])
        + struct.pack("<h", len(else_part))
        + else_part
        + then_part
    )
    assert value_of(expr) == 100
    REGS[0] = 6
    try:
        assert value_of(expr) == 200
    finally:
        REGS[0] = 5
    with pytest.raises(ExprError, match="terminate"):
        evaluate(bytes([SKIP]) + struct.pack("<h", -3), make_ctx())
    with pytest.raises(ExprError, match="outside"):
        evaluate(bytes([SKIP]) + struct.pack("<h", 10), make_ctx())


@pytest.mark.parametrize(
    ("opcode", "name"),
    [
        (ENTRY_VALUE, "DW_OP_entry_value"),
        (GNU_ENTRY_VALUE, "DW_OP_GNU_entry_value"),
        (IMPLICIT_POINTER, "DW_OP_implicit_pointer"),
        (0xE0, "DW_OP_GNU_push_tls_address"),
        (0x02, "0x02"),
    ],
)
def test_unsupported(opcode: int, name: str) -> None:
    with pytest.raises(Unsupported, match=name):
        evaluate(bytes([opcode, 1, REG0 + 5, STACK_VALUE]), make_ctx())


def test_unknown_values() -> None:
    with pytest.raises(ValueUnknown):
        evaluate(bytes([BREG0 + 1, 0]), make_ctx())  # rdx not recoverable
    with pytest.raises(ValueUnknown):
        evaluate(bytes([FBREG, 0x10]), make_ctx())
    with pytest.raises(ValueUnknown):
        evaluate(bytes([CALL_FRAME_CFA]), make_ctx())
    with pytest.raises(ValueUnknown, match="optimized out"):
        evaluate(b"", make_ctx())
    with pytest.raises(OSError):
        evaluate(bytes([LIT0 + 1, DEREF]), make_ctx())


@pytest.mark.parametrize(
    "expr",
    [
        bytes([PLUS]),  # stack underflow
        bytes([LIT0, PICK, 3]),
        bytes([ADDR, 1, 2]),  # truncated operand
        bytes([CONSTU, 0x80]),
        bytes([IMPLICIT_VALUE, 4, 1]),
        bytes([DEREF_SIZE, 9]),
    ],
)
def test_malformed(expr: bytes) -> None:
    with pytest.raises(ExprError):
        evaluate(expr, make_ctx(initial_stack=(0x1000,)) if expr[0] == DEREF_SIZE else make_ctx())


GLOBALS_C = """
long counter = 7;
static int table[4] = {1, 2, 3, 4};
int *pick(int i) { return &table[i]; }
int main(void) { long local = counter; return *pick((int)local & 3); }
"""


def test_real_locations(tmp_path: Path) -> None:
    """Locations gcc emits for globals (DW_OP_addr) and -O0 locals (DW_OP_fbreg)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    (tmp_path / "g.c").write_text(GLOBALS_C)
    binary = tmp_path / "g"
    subprocess.run(["gcc", "-g", "-O0", "-o", str(binary), str(tmp_path / "g.c")], check=True)
    with open(binary, "rb") as stream:
        elf = ELFFile(stream)
        symtab = elf.get_section_by_name(".symtab")
        assert symtab is not None
        symbols = {sym.name: sym["st_value"] for sym in symtab.iter_symbols()}
        locations = {}
        frame_base = b""
        for cu in elf.get_dwarf_info().iter_CUs():
            for die in cu.iter_DIEs():
                name = die.attributes.get("DW_AT_name")
                if name is None:
                    continue
                if "DW_AT_location" in die.attributes:
                    locations[name.value.decode()] = bytes(die.attributes["DW_AT_location"].value)
                if name.value == b"main":
                    frame_base = bytes(die.attributes["DW_AT_frame_base"].value)
    bias = 0x555555554000
    ctx = make_ctx(load_bias=bias)
    assert evaluate(locations["counter"], ctx) == MemoryLocation(symbols["counter"] + bias)
    assert evaluate(locations["table"], ctx) == MemoryLocation(symbols["table"] + bias)
    # main's frame base is the CFA; `local` sits at a fixed negative offset from it.
    cfa = 0x7FFFFFFFE100
    base = evaluate(frame_base, make_ctx(cfa=cfa))
    assert base == MemoryLocation(cfa)
    local = evaluate(locations["local"], make_ctx(frame_base=cfa))
    assert isinstance(local, MemoryLocation) and cfa - 64 <= local.addr < cfa - 8
