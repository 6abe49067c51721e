"""DWARF expression evaluator for x86-64: location descriptions and CFI expressions.

`evaluate` runs a DWARF expression (the bytes of a ``DW_AT_location`` block, a
location-list entry, ``DW_AT_frame_base``, or a CFI ``DW_CFA_*expression``
block) against an `ExprContext` that supplies registers, memory, the CFA and
the frame base, and returns where the value lives as a `Location`.

The stack holds unsigned 64-bit integers (DWARF's generic type on x86-64);
operations that DWARF defines as signed (``shra``, ``div``, ``mod``,
comparisons, ``abs``) reinterpret them as two's complement.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ekiden_trace.binary.dwarf.leb128 import sleb, uleb

__all__ = [
    "DWARF_REGS",
    "DWARF_REG_NAMES",
    "RA_REGNO",
    "RSP_REGNO",
    "ExprContext",
    "ExprError",
    "Location",
    "MemoryLocation",
    "PieceLocation",
    "RegisterLocation",
    "Unsupported",
    "ValueLocation",
    "ValueUnknown",
    "evaluate",
    "regs_to_dwarf",
    "sleb",
    "uleb",
]

MASK64 = (1 << 64) - 1

#: x86-64 DWARF register numbers (System V psABI, figure 3.36), name -> number.
DWARF_REGS: dict[str, int] = {
    "rax": 0,
    "rdx": 1,
    "rcx": 2,
    "rbx": 3,
    "rsi": 4,
    "rdi": 5,
    "rbp": 6,
    "rsp": 7,
    **{f"r{n}": n for n in range(8, 16)},
    "rip": 16,
    **{f"xmm{n}": 17 + n for n in range(16)},
    "rflags": 49,
    "es": 50,
    "cs": 51,
    "ss": 52,
    "ds": 53,
    "fs": 54,
    "gs": 55,
    "fs_base": 58,
    "gs_base": 59,
}
#: number -> name, the inverse of `DWARF_REGS`.
DWARF_REG_NAMES: dict[int, str] = {num: name for name, num in DWARF_REGS.items()}

#: DWARF column of the return address (x86-64 CIEs use 16, "rip").
RA_REGNO = 16
#: DWARF number of the stack pointer.
RSP_REGNO = 7

# Registers taken from a user_regs_struct: the 16 general registers and rip.
_USER_REGS_FIELDS = tuple(DWARF_REG_NAMES[n] for n in range(17))

# Bound on executed operations, so a DW_OP_skip/bra loop cannot hang us.
_MAX_STEPS = 10_000


class ExprError(Exception):
    """A DWARF expression is malformed or cannot be evaluated."""


class Unsupported(ExprError):
    """The expression uses an operation this evaluator does not implement."""


class ValueUnknown(ExprError):
    """A value the expression needs (register, CFA, frame base) is not recoverable."""


@dataclass(frozen=True, slots=True)
class MemoryLocation:
    """The object lives in the target's memory at `addr` (a runtime address)."""

    addr: int


@dataclass(frozen=True, slots=True)
class RegisterLocation:
    """The object lives in DWARF register `regno` of the frame."""

    regno: int


@dataclass(frozen=True, slots=True)
class ValueLocation:
    """The object has no storage; its value is known (stack_value or implicit_value).

    `value` is an ``int`` for ``DW_OP_stack_value`` (a 64-bit unsigned stack
    entry) and ``bytes`` for ``DW_OP_implicit_value``.
    """

    value: int | bytes

    def as_bytes(self, size: int) -> bytes:
        """The first `size` bytes of the value in target (little-endian) order."""
        if isinstance(self.value, bytes):
            return self.value[:size].ljust(size, b"\0")
        return (self.value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


@dataclass(frozen=True, slots=True)
class PieceLocation:
    """An object split in pieces: ``(location or None if optimized out, size in bytes)``."""

    pieces: list[tuple[Location | None, int]]


Location = MemoryLocation | RegisterLocation | ValueLocation | PieceLocation


@dataclass(slots=True)
class ExprContext:
    """What an expression may consult while it runs.

    `regs` holds the frame's recoverable registers by DWARF number (a register
    missing from it is not recoverable: `reg` raises `ValueUnknown`);
    `read_word` reads 8 bytes little-endian at a runtime address (it may raise
    ``OSError``).
    `load_bias` is added to ``DW_OP_addr``/``DW_OP_addrx`` results, which are
    link-time addresses. `addrx` maps a ``.debug_addr`` index to its link-time
    value (needed for ``DW_OP_addrx``/``DW_OP_constx``). `initial_stack` is
    pushed before the first operation (CFI register rules push the CFA).
    """

    regs: Mapping[int, int]
    read_word: Callable[[int], int]
    cfa: int | None = None
    frame_base: int | None = None
    load_bias: int = 0
    addrx: Callable[[int], int] | None = None
    initial_stack: tuple[int, ...] = field(default_factory=tuple)

    def reg(self, regno: int) -> int:
        """The value of DWARF register `regno`; `ValueUnknown` if it is not recoverable."""
        try:
            return self.regs[regno]
        except KeyError:
            name = DWARF_REG_NAMES.get(regno, str(regno))
            raise ValueUnknown(f"register {name} is not recoverable in this frame") from None


def regs_to_dwarf(user_regs: object) -> dict[int, int]:
    """DWARF-numbered registers (0-16) from a ``user_regs_struct``-like object.

    For example python-ptrace's ``ptrace.binding.linux_struct.user_regs_struct``,
    as returned by ``ptrace.binding.func.ptrace_getregs``.
    """
    return {num: getattr(user_regs, name) & MASK64 for num, name in enumerate(_USER_REGS_FIELDS)}


def _signed(value: int) -> int:
    return value - (1 << 64) if value & (1 << 63) else value


def _div(a: int, b: int) -> int:
    if b == 0:
        raise ExprError("DW_OP_div by zero")
    quotient = abs(a) // abs(b)
    return -quotient if (a < 0) != (b < 0) else quotient


def _mod(a: int, b: int) -> int:
    if b == 0:
        raise ExprError("DW_OP_mod by zero")
    return a % b


# Binary operations: opcode -> (function of (second, top), operands are signed?)
_BINARY: dict[int, tuple[Callable[[int, int], int], bool]] = {
    0x1A: (operator.and_, False),
    0x1B: (_div, True),
    0x1C: (operator.sub, False),
    0x1D: (_mod, False),
    0x1E: (operator.mul, False),
    0x21: (operator.or_, False),
    0x22: (operator.add, False),
    0x24: (lambda a, b: a << b if b < 64 else 0, False),
    0x25: (lambda a, b: a >> b if b < 64 else 0, False),
    0x26: (lambda a, b: a >> min(b, 63), True),
    0x27: (operator.xor, False),
    0x29: (lambda a, b: int(a == b), True),
    0x2A: (lambda a, b: int(a >= b), True),
    0x2B: (lambda a, b: int(a > b), True),
    0x2C: (lambda a, b: int(a <= b), True),
    0x2D: (lambda a, b: int(a < b), True),
    0x2E: (lambda a, b: int(a != b), True),
}

# Fixed-size constants: opcode -> (size, signed)
_CONST: dict[int, tuple[int, bool]] = {
    0x08: (1, False),
    0x09: (1, True),
    0x0A: (2, False),
    0x0B: (2, True),
    0x0C: (4, False),
    0x0D: (4, True),
    0x0E: (8, False),
    0x0F: (8, True),
}

# Names of operations we recognise but do not evaluate, for error messages.
_UNSUPPORTED_NAMES: dict[int, str] = {
    0x17: "DW_OP_rot",
    0x18: "DW_OP_xderef",
    0x95: "DW_OP_xderef_size",
    0x97: "DW_OP_push_object_address",
    0x98: "DW_OP_call2",
    0x99: "DW_OP_call4",
    0x9A: "DW_OP_call_ref",
    0x9B: "DW_OP_form_tls_address",
    0x9D: "DW_OP_bit_piece",
    0xA0: "DW_OP_implicit_pointer",
    0xA3: "DW_OP_entry_value",
    0xA4: "DW_OP_const_type",
    0xA5: "DW_OP_regval_type",
    0xA6: "DW_OP_deref_type",
    0xA7: "DW_OP_xderef_type",
    0xA8: "DW_OP_convert",
    0xA9: "DW_OP_reinterpret",
    0xE0: "DW_OP_GNU_push_tls_address",
    0xF0: "DW_OP_GNU_uninit",
    0xF1: "DW_OP_GNU_encoded_addr",
    0xF2: "DW_OP_GNU_implicit_pointer",
    0xF3: "DW_OP_GNU_entry_value",
    0xF4: "DW_OP_GNU_const_type",
    0xF5: "DW_OP_GNU_regval_type",
    0xF6: "DW_OP_GNU_deref_type",
    0xF7: "DW_OP_GNU_convert",
    0xF9: "DW_OP_GNU_reinterpret",
    0xFA: "DW_OP_GNU_parameter_ref",
    0xFB: "DW_OP_GNU_addr_index",
    0xFC: "DW_OP_GNU_const_index",
    0xFD: "DW_OP_GNU_variable_value",
}


class _Machine:
    """One evaluation: the stack, the position, and the pending piece state."""

    def __init__(self, expr: bytes, ctx: ExprContext) -> None:
        self.expr = expr
        self.ctx = ctx
        self.stack: list[int] = [v & MASK64 for v in ctx.initial_stack]
        self.register: int | None = None  # set by DW_OP_regN/regx
        self.value: int | bytes | None = None  # set by stack_value/implicit_value
        self.pieces: list[tuple[Location | None, int]] = []

    def pop(self) -> int:
        if not self.stack:
            raise ExprError("DWARF expression stack underflow")
        return self.stack.pop()

    def push(self, value: int) -> None:
        self.stack.append(value & MASK64)

    def reg(self, regno: int) -> int:
        return self.ctx.reg(regno) & MASK64

    def current(self, final: bool) -> Location | None:
        """The location described since the last piece (None: nothing, i.e. optimized out)."""
        if self.register is not None:
            loc: Location | None = RegisterLocation(self.register)
        elif self.value is not None:
            loc = ValueLocation(self.value)
        elif self.stack:
            loc = MemoryLocation(self.stack[-1] if final else self.pop())
        else:
            loc = None
        self.register = None
        self.value = None
        return loc

    def run(self) -> Location:
        expr = self.expr
        end = len(expr)
        pos = 0
        steps = 0
        while pos < end:
            steps += 1
            if steps > _MAX_STEPS:
                raise ExprError("DWARF expression did not terminate")
            op = expr[pos]
            pos += 1
            # After DW_OP_regN / stack_value / implicit_value only a piece may follow.
            terminal = self.register is not None or self.value is not None
            if terminal and op not in (0x93, 0x96):
                raise ExprError(f"operation 0x{op:02x} after a terminal location operation")
            pos = self.step(op, pos)
        if self.pieces:
            return PieceLocation(self.pieces)
        loc = self.current(final=True)
        if loc is None:
            raise ValueUnknown("empty location expression (value optimized out)")
        return loc

    def step(self, op: int, pos: int) -> int:
        """Execute operation `op` whose operands start at `pos`; return the next position."""
        ctx = self.ctx
        if 0x30 <= op <= 0x4F:  # DW_OP_lit0..31
            self.push(op - 0x30)
        elif 0x50 <= op <= 0x6F:  # DW_OP_reg0..31
            self.register = op - 0x50
        elif 0x70 <= op <= 0x8F:  # DW_OP_breg0..31
            offset, pos = self.sleb(pos)
            self.push(self.reg(op - 0x70) + offset)
        elif op in _BINARY:
            func, signed = _BINARY[op]
            top = self.pop()
            second = self.pop()
            if signed:
                top, second = _signed(top), _signed(second)
            self.push(func(second, top))
        elif op in _CONST:
            size, signed = _CONST[op]
            self.push(int.from_bytes(self.take(pos, size), "little", signed=signed))
            pos += size
        elif op == 0x03:  # DW_OP_addr
            self.push(int.from_bytes(self.take(pos, 8), "little") + ctx.load_bias)
            pos += 8
        elif op in (0xA1, 0xA2):  # DW_OP_addrx, DW_OP_constx
            index, pos = self.uleb(pos)
            if ctx.addrx is None:
                raise Unsupported("DW_OP_addrx" if op == 0xA1 else "DW_OP_constx")
            self.push(ctx.addrx(index) + (ctx.load_bias if op == 0xA1 else 0))
        elif op == 0x10:  # DW_OP_constu
            value, pos = self.uleb(pos)
            self.push(value)
        elif op == 0x11:  # DW_OP_consts
            value, pos = self.sleb(pos)
            self.push(value)
        elif op == 0x90:  # DW_OP_regx
            self.register, pos = self.uleb(pos)
        elif op == 0x92:  # DW_OP_bregx
            regno, pos = self.uleb(pos)
            offset, pos = self.sleb(pos)
            self.push(self.reg(regno) + offset)
        elif op == 0x91:  # DW_OP_fbreg
            offset, pos = self.sleb(pos)
            if ctx.frame_base is None:
                raise ValueUnknown("DW_OP_fbreg without a frame base")
            self.push(ctx.frame_base + offset)
        elif op == 0x9C:  # DW_OP_call_frame_cfa
            if ctx.cfa is None:
                raise ValueUnknown("DW_OP_call_frame_cfa without a CFA")
            self.push(ctx.cfa)
        elif op == 0x23:  # DW_OP_plus_uconst
            value, pos = self.uleb(pos)
            self.push(self.pop() + value)
        elif op == 0x1F:  # DW_OP_neg
            self.push(-self.pop())
        elif op == 0x20:  # DW_OP_not
            self.push(~self.pop())
        elif op == 0x19:  # DW_OP_abs
            self.push(abs(_signed(self.pop())))
        elif op == 0x12:  # DW_OP_dup
            self.push(self.peek(0))
        elif op == 0x13:  # DW_OP_drop
            self.pop()
        elif op == 0x14:  # DW_OP_over
            self.push(self.peek(1))
        elif op == 0x15:  # DW_OP_pick
            self.push(self.peek(self.take(pos, 1)[0]))
            pos += 1
        elif op == 0x16:  # DW_OP_swap
            top = self.pop()
            second = self.pop()
            self.stack += (top, second)
        elif op == 0x06:  # DW_OP_deref
            self.push(ctx.read_word(self.pop()))
        elif op == 0x94:  # DW_OP_deref_size
            size = self.take(pos, 1)[0]
            pos += 1
            if not 1 <= size <= 8:
                raise ExprError(f"DW_OP_deref_size of {size} bytes")
            self.push(ctx.read_word(self.pop()) & ((1 << (8 * size)) - 1))
        elif op == 0x9F:  # DW_OP_stack_value
            self.value = self.pop()
        elif op == 0x9E:  # DW_OP_implicit_value
            size, pos = self.uleb(pos)
            self.value = self.take(pos, size)
            pos += size
        elif op == 0x93:  # DW_OP_piece
            size, pos = self.uleb(pos)
            self.pieces.append((self.current(final=False), size))
        elif op == 0x2F:  # DW_OP_skip
            pos = self.branch(pos)
        elif op == 0x28:  # DW_OP_bra
            pos = self.branch(pos) if self.pop() != 0 else pos + 2
        elif op == 0x96:  # DW_OP_nop
            pass
        else:
            raise Unsupported(_UNSUPPORTED_NAMES.get(op, f"DW_OP 0x{op:02x}"))
        return pos

    def take(self, pos: int, size: int) -> bytes:
        if pos + size > len(self.expr):
            raise ExprError("DWARF expression ends inside an operation")
        return bytes(self.expr[pos : pos + size])

    def uleb(self, pos: int) -> tuple[int, int]:
        try:
            return uleb(self.expr, pos)
        except IndexError:
            raise ExprError("DWARF expression ends inside an operation") from None

    def sleb(self, pos: int) -> tuple[int, int]:
        try:
            return sleb(self.expr, pos)
        except IndexError:
            raise ExprError("DWARF expression ends inside an operation") from None

    def peek(self, depth: int) -> int:
        if depth >= len(self.stack):
            raise ExprError("DWARF expression stack underflow")
        return self.stack[-1 - depth]

    def branch(self, pos: int) -> int:
        target = pos + 2 + int.from_bytes(self.take(pos, 2), "little", signed=True)
        if not 0 <= target <= len(self.expr):
            raise ExprError("DWARF expression branches outside itself")
        return target


def evaluate(expr: bytes, ctx: ExprContext) -> Location:
    """Evaluate DWARF expression `expr` and return the location it describes.

    Without ``DW_OP_regN``/``stack_value``/``implicit_value``/``piece``, the
    top of the stack is the result as a `MemoryLocation` (for a CFA rule that
    address *is* the CFA). An empty expression (optimized out) raises
    `ValueUnknown`; unknown or unimplemented operations raise `Unsupported`;
    ``OSError`` from ``ctx.read_word`` propagates.
    """
    return _Machine(expr, ctx).run()
