"""Frames of a stopped thread, recovered from call frame information (CFI).

`unwind` walks outward from a thread's registers using each module's
`CallFrameTable`. It reads the target only through the `read_word` callback
it is given and only the words the CFI rules name (saved registers and return
addresses), and keeps all state in plain ints.

Registers of an outer frame: those the CFI restores (for x86-64 code that is
the return address and the callee-saved registers the function saved), the
callee-saved registers the function left alone (rbx, rbp, r12-r15 keep their
value), and rsp, which is the CFA of the frame below. Caller-saved registers
(rax, rcx, rdx, rsi, rdi, r8-r11) are not recoverable in outer frames unless a
signal frame saved them, and are absent from `Frame.regs`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from ekiden_trace.binary.dwarf.cfi import CallFrameTable, CfiRow, RegRule, RuleKind
from ekiden_trace.binary.dwarf.expr import (
    MASK64,
    RA_REGNO,
    RSP_REGNO,
    ExprContext,
    ExprError,
    Location,
    MemoryLocation,
    ValueLocation,
    ValueUnknown,
    evaluate,
)

__all__ = ["CALLEE_SAVED", "Frame", "Frames", "ModuleEntry", "ModuleMap", "unwind"]

#: DWARF numbers of the x86-64 callee-saved registers: rbx, rbp, r12-r15.
CALLEE_SAVED = (3, 6, 12, 13, 14, 15)


class ModuleEntry(NamedTuple):
    """The module a runtime pc belongs to."""

    table: CallFrameTable
    load_bias: int  # runtime address - link-time address
    path: str


class ModuleMap:
    """Runtime address ranges of loaded modules, each with its CFI and load bias."""

    def __init__(self, ranges: Iterable[tuple[int, int, int, str, CallFrameTable]]) -> None:
        """`ranges`: ``(start, end, load_bias, path, table)``, end exclusive, not overlapping.

        A module may appear in several ranges (one per mapping).
        """
        self._ranges = sorted(ranges, key=lambda item: item[0])
        self._starts = [item[0] for item in self._ranges]

    def lookup(self, pc: int) -> ModuleEntry | None:
        """The module whose range holds runtime address `pc`, or None."""
        i = bisect.bisect_right(self._starts, pc) - 1
        if i < 0:
            return None
        _start, end, load_bias, path, table = self._ranges[i]
        if pc >= end:
            return None
        return ModuleEntry(table, load_bias, path)


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of a stopped thread; all addresses are runtime addresses.

    `regs` are DWARF-numbered register values in this frame (16 = rip = `pc`,
    7 = rsp); `cfa` is None when the frame has no usable CFI (it is then the
    last frame). `is_return_address` is True when `pc` is a return address
    rather than the next instruction to run: use `lookup_pc` for CFI, symbol,
    scope, line and location-list lookups. `is_signal_frame` marks the
    kernel's signal trampoline frame (its CIE has the "S" augmentation).
    """

    pc: int
    cfa: int | None
    regs: dict[int, int]
    is_top: bool
    module: str | None
    is_return_address: bool = False
    is_signal_frame: bool = False

    @property
    def lookup_pc(self) -> int:
        """The address inside the call instruction for return addresses, else `pc`."""
        return self.pc - 1 if self.is_return_address else self.pc


class Frames(list[Frame]):
    """The frames of a thread, innermost first.  `cut` is None when the walk reached the
    outermost frame (whose return address is undefined), else why it ended before."""

    cut: str | None = None


def unwind(
    regs: dict[int, int],
    modules: ModuleMap,
    read_word: Callable[[int], int],
    stack_size: int,
) -> Frames:
    """Unwind a stopped thread whose DWARF-numbered registers are `regs` (rip included).

    `read_word(addr)` reads 8 bytes little-endian from the target and may
    raise ``OSError``; `stack_size` is the size of the stack in use (from the
    stack pointer to the end of its mapping).  The walk never raises: it ends at
    the outermost frame, or else says why in `Frames.cut`: a pc with no module or
    no FDE, a CFA that stops increasing (the bogus frame is dropped), a failed
    read, or more frames than `stack_size` can hold (each one takes at least its
    return address).
    """
    frames = Frames()
    max_frames = max(stack_size // 8, 1)
    regs = {regno: value & MASK64 for regno, value in regs.items()}
    is_return_address = False
    inner: Frame | None = None
    rows: dict[int, tuple[ModuleEntry | None, CfiRow | None]] = {}  # recursion repeats pcs
    while True:
        if len(frames) >= max_frames:
            frames.cut = f"more than {max_frames} frames, more than its stack can hold"
            break
        pc = regs.get(RA_REGNO)
        if pc is None:
            frames.cut = "the pc of the first frame is unknown"
            break
        lookup_pc = pc - 1 if is_return_address else pc
        if lookup_pc not in rows:
            entry = modules.lookup(lookup_pc)
            rows[lookup_pc] = (
                entry,
                entry.table.row_at(lookup_pc - entry.load_bias) if entry is not None else None,
            )
        entry, row = rows[lookup_pc]
        cfa = None
        if row is not None:
            try:
                cfa = _cfa(row, regs, read_word)
            except (ExprError, OSError):
                cfa = None
        if (
            inner is not None
            and cfa is not None
            and inner.cfa is not None
            and not inner.is_signal_frame
            and cfa <= inner.cfa
        ):
            frames.cut = f"the frame at {pc:#x} does not move outward (a corrupt stack)"
            break
        frame = Frame(
            pc=pc,
            cfa=cfa,
            regs=regs,
            is_top=inner is None,
            module=entry.path if entry is not None else None,
            is_return_address=is_return_address,
            is_signal_frame=row is not None and row.is_signal_frame,
        )
        frames.append(frame)
        if row is None or cfa is None:
            where = "no module" if entry is None else f"no unwind information in {entry.path}"
            frames.cut = f"{where} for pc {pc:#x}"
            break
        try:
            caller = _caller_regs(row, cfa, regs, read_word)
        except OSError as exc:
            frames.cut = f"its stack cannot be read ({exc})"
            break
        if caller is None:
            break  # the outermost frame
        inner = frame
        regs = caller
        is_return_address = not frame.is_signal_frame
    return frames


def _cfa(row: CfiRow, regs: dict[int, int], read_word: Callable[[int], int]) -> int:
    if row.cfa.expr is not None:
        ctx = ExprContext(regs=regs, read_word=read_word)
        return _top_of_stack(evaluate(row.cfa.expr, ctx))
    if row.cfa.regno not in regs:
        raise ValueUnknown(f"CFA register {row.cfa.regno} not recoverable")
    return (regs[row.cfa.regno] + row.cfa.offset) & MASK64


def _caller_regs(
    row: CfiRow, cfa: int, regs: dict[int, int], read_word: Callable[[int], int]
) -> dict[int, int] | None:
    """The caller's registers, or None when there is no caller (outermost frame)."""
    ctx = ExprContext(regs=regs, read_word=read_word, cfa=cfa, initial_stack=(cfa,))
    caller: dict[int, int] = {}
    for regno in CALLEE_SAVED:
        if regno not in row.regs and regno in regs:
            caller[regno] = regs[regno]
    caller[RSP_REGNO] = cfa
    for regno, rule in row.regs.items():
        try:
            value = _apply(rule, regno, cfa, ctx)
        except ExprError:
            value = None
        if value is None:
            caller.pop(regno, None)
        else:
            caller[regno] = value & MASK64
    return_address = caller.pop(row.ra_regno, None) if row.ra_regno in row.regs else None
    if not return_address:
        return None
    caller[RA_REGNO] = return_address
    return caller


def _apply(rule: RegRule, regno: int, cfa: int, ctx: ExprContext) -> int | None:
    """Value of register `regno` in the caller under `rule`; None if not recoverable.

    `ctx` holds the callee's registers, with the CFA pushed as initial stack.
    """
    kind = rule.kind
    if kind is RuleKind.OFFSET:
        return ctx.read_word((cfa + _int(rule.arg)) & MASK64)
    if kind is RuleKind.VAL_OFFSET:
        return cfa + _int(rule.arg)
    if kind is RuleKind.SAME_VALUE:
        return ctx.regs.get(regno)
    if kind is RuleKind.REGISTER:
        return ctx.regs.get(_int(rule.arg))
    if kind is RuleKind.EXPRESSION:
        return ctx.read_word(_top_of_stack(evaluate(_bytes(rule.arg), ctx)))
    if kind is RuleKind.VAL_EXPRESSION:
        return _top_of_stack(evaluate(_bytes(rule.arg), ctx))
    return None  # undefined


def _top_of_stack(location: Location) -> int:
    """The value a CFI expression leaves on top of its stack."""
    if isinstance(location, MemoryLocation):
        return location.addr
    if isinstance(location, ValueLocation) and isinstance(location.value, int):
        return location.value
    raise ExprError(f"CFI expression did not compute an address: {location!r}")


def _int(arg: int | bytes | None) -> int:
    if not isinstance(arg, int):
        raise ExprError(f"CFI rule argument {arg!r} is not a number")
    return arg


def _bytes(arg: int | bytes | None) -> bytes:
    if not isinstance(arg, bytes):
        raise ExprError(f"CFI rule argument {arg!r} is not an expression")
    return arg
