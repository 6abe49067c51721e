"""Instructions around a code address, for showing people where a process stands."""

from __future__ import annotations

from collections.abc import Callable

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

MAX_FUNCTION_BYTES = 1 << 16


def instructions_around(
    read: Callable[[int, int], bytes], start: int, pc: int, before: int = 4, after: int = 4
) -> list[str]:
    """Disassemble from `start` (a function's first byte) to a few instructions past `pc`.

    Decoding from the function start keeps instruction boundaries right; the
    result marks the instruction at `pc` with '=>'.  Empty when `pc` is not on
    an instruction boundary of that decoding.
    """
    if not start <= pc < start + MAX_FUNCTION_BYTES:
        start = pc
    code = read(start, pc - start + 16 * (after + 1))
    decoder = Cs(CS_ARCH_X86, CS_MODE_64)
    decoded = list(decoder.disasm(code, start))
    at = next((i for i, insn in enumerate(decoded) if insn.address == pc), None)
    if at is None:
        return []
    lines = []
    for insn in decoded[max(at - before, 0) : at + after + 1]:
        marker = "=>" if insn.address == pc else "  "
        lines.append(f"{marker} {insn.address:#x}: {insn.mnemonic} {insn.op_str}".rstrip())
    return lines
