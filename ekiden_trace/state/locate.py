"""Where a tagged variable lives in a stopped process.

A global or static has a fixed address (plus the load bias). A local lives in
the frame of its function, which may be inlined: DWARF gives its location as an
expression, or a list of them by pc range, evaluated with that frame's registers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

from ekiden_trace.binary.dwarf.expr import (
    ExprContext,
    MemoryLocation,
    RegisterLocation,
    Unsupported,
    ValueLocation,
    ValueUnknown,
    evaluate,
)
from ekiden_trace.binary.dwarf.index import DebugIndex
from ekiden_trace.binary.dwarf.model import Variable
from ekiden_trace.binary.program import TaggedVariable
from ekiden_trace.target.address_space import LiveProcess
from ekiden_trace.target.unwind import Frame, Frames


@dataclass(frozen=True)
class Absent:
    """Why a tagged variable has no value in the stopped process.  `lost` unless its
    function is simply not running (then there is nothing to carry over): the variable
    exists but cannot be read, and an update must not go on without it."""

    reason: str
    lost: bool = True


def frame_functions(index: DebugIndex, frame: Frame, bias: int) -> tuple[str, ...]:
    """The functions a frame stands in, innermost first: those inlined at its pc, then the
    out-of-line function itself (empty when no function of the program covers the pc)."""
    return _functions_at(index, frame.lookup_pc - bias)


@functools.lru_cache(maxsize=4096)  # a deep recursion asks for the same pcs again and again
def _functions_at(index: DebugIndex, link_pc: int) -> tuple[str, ...]:
    function = index.function_at(link_pc)
    if function is None:
        return ()
    return (*index.inline_chain_at(link_pc), function.name)


def static_address(var: Variable, bias: int) -> int | None:
    """The run-time address of a global or static variable; None for a local."""
    if var.location["kind"] == "addr":
        return var.location["addr"] + bias
    return None


def locate(live: LiveProcess, tag: TaggedVariable, frames: Frames) -> int | bytes | Absent:
    """Where a tagged variable is: its address in memory; its value's bytes when it lives
    outside memory (in a register, or computed); or why it has neither."""
    address = static_address(tag.variable, live.bias)
    if address is not None:
        return address
    try:
        return _locate_local(live, tag, frames)
    except (Unsupported, ValueUnknown) as exc:
        return Absent(f"its location cannot be evaluated here ({exc})")


def _locate_local(live: LiveProcess, tag: TaggedVariable, frames: Frames) -> int | bytes | Absent:
    """A local in the innermost frame that stands in its function."""
    var = tag.variable
    index, bias = live.program.index, live.bias
    for frame in frames:
        if var.function not in frame_functions(index, frame, bias):
            continue
        lookup_pc = frame.lookup_pc - bias
        function = index.function_at(lookup_pc)
        assert function is not None, "frame_functions found it"
        expr = _location_for_pc(var.location, lookup_pc)
        if expr is None:
            home = _stack_home(live, var, function.frame_base, frame)
            if home is not None:
                return home
            return Absent(f"it is optimised out at {function.name}'s current line")
        frame_base = _frame_base(live, function.frame_base, frame)
        loc = evaluate(expr, _context(live, frame, frame_base))
        if isinstance(loc, MemoryLocation):
            return loc.addr
        if isinstance(loc, RegisterLocation):
            value = frame.regs.get(loc.regno)
            if value is None:
                home = _stack_home(live, var, function.frame_base, frame)
                if home is not None:
                    return home
                return Absent("its register is not recoverable in this frame")
            return value.to_bytes(8, "little")[: tag.size or 8]
        if isinstance(loc, ValueLocation):
            return loc.as_bytes(tag.size or 8)
        return Absent("its location is split into pieces, which is not supported")
    if frames.cut is None:
        return Absent(f"{var.function} is not active in the stopped thread", lost=False)
    return Absent(
        f"{var.function} is not among the {len(frames)} frames unwound, and the stack could "
        f"not be unwound further: {frames.cut}"
    )


def _stack_home(
    live: LiveProcess, var: Variable, frame_base_hex: str | None, frame: Frame
) -> int | None:
    """The stack slot of a tagged local where its location list has no entry, or only a
    lost register, at the frame's pc.

    A tag takes the variable's address, so the variable has a slot, and since that
    address escaped, the slot holds its value whenever the function calls out, as at
    every stop.  clang describes the slot only over the tag's slow path and tracks a
    register copy elsewhere.  A slot sits at a fixed distance from the CFA, so an entry
    of the list that names it, evaluated with the CFA rule at that entry's pc, gives
    its address in this frame.
    """
    if var.location["kind"] != "list" or frame.cfa is None:
        return None
    for lo, _hi, expr in var.location["ranges"]:
        rule = live.cfa_rule_at(lo)
        if rule is None or rule.regno is None or rule.expr is not None:
            continue
        # At pc `lo`, the CFA register held CFA - offset; no other register is known.
        at_lo = replace(frame, regs={rule.regno: frame.cfa - rule.offset})
        try:
            base = _frame_base(live, frame_base_hex, at_lo)
            loc = evaluate(bytes.fromhex(expr), _context(live, at_lo, base))
        except (Unsupported, ValueUnknown):
            continue
        if isinstance(loc, MemoryLocation):
            return loc.addr
    return None


def _location_for_pc(location: dict, pc: int) -> bytes | None:
    """The DWARF expression of a location that is valid at a link-time pc."""
    if location["kind"] == "expr":
        return bytes.fromhex(location["expr"])
    if location["kind"] == "list":
        for lo, hi, expr in location["ranges"]:
            if lo <= pc < hi:
                return bytes.fromhex(expr)
    return None


def _frame_base(live: LiveProcess, expr_hex: str | None, frame: Frame) -> int | None:
    """The value of a function's DW_AT_frame_base in a frame, if it has one."""
    if not expr_hex:
        return None
    loc = evaluate(bytes.fromhex(expr_hex), _context(live, frame, None))
    if isinstance(loc, MemoryLocation):
        return loc.addr
    if isinstance(loc, RegisterLocation):
        return frame.regs.get(loc.regno)
    return None


def _context(live: LiveProcess, frame: Frame, frame_base: int | None) -> ExprContext:
    assert live.tracee is not None, "locating a local needs a stopped tracee"
    return ExprContext(
        regs=frame.regs,
        read_word=live.tracee.read_word,
        cfa=frame.cfa,
        frame_base=frame_base,
        load_bias=live.bias,
    )
