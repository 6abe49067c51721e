"""Unwinding real stopped processes: CFI from the binaries, registers and memory via ptrace."""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from ptrace.binding.func import ptrace, ptrace_getregs
from ptrace.error import PtraceError

from ekiden_trace.binary.dwarf.cfi import CallFrameTable, RuleKind
from ekiden_trace.binary.dwarf.expr import (
    ExprContext,
    MemoryLocation,
    evaluate,
    regs_to_dwarf,
)
from ekiden_trace.target.unwind import Frame, ModuleMap, unwind

PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_DETACH = 17
LIBC = Path("/usr/lib/x86_64-linux-gnu/libc.so.6")

PROGRAM = r"""
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

volatile int sink;
long *volatile leak;

/* Blocks reading stdin (the test never writes to it). No stdio: this also
   runs in a signal handler. */
static void block_message(const char *what) {
    char line[64];
    int n = snprintf(line, sizeof line, "%s %d\n", what, (int)getpid());
    sink += write(1, line, n);
}

__attribute__((noinline)) void block(const char *what) {
    char c;
    block_message(what);
    sink += read(0, &c, 1);
}

__attribute__((noinline)) void handler(int sig) { block("handler"); sink += sig; }

/* With signals, spin until the test sends SIGUSR1: the handler then blocks,
   so the stack holds a signal frame whose caller is inner's own code. */
__attribute__((noinline)) void inner(int spin) {
    if (spin) {
        block_message("spinning");
        for (;;)
            sink++;
    }
    block("blocked");
    sink++;
}
__attribute__((noinline)) void middle(int spin) {
    long marker = 0x5eed0000L + spin; /* in memory: its address escapes */
    leak = &marker;
    inner(spin);
    leak = 0;
}
__attribute__((noinline)) void outer(int spin) { middle(spin); sink++; }

int main(int argc, char **argv) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigaction(SIGUSR1, &sa, NULL);
    outer(argc > 1);
    return sink;
}
"""


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The test program built at -O0 and -O2."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    workdir = tmp_path_factory.mktemp("unwind")
    source = workdir / "prog.c"
    source.write_text(PROGRAM)
    built = {}
    for opt in ("-O0", "-O2"):
        out = workdir / f"prog{opt}"
        subprocess.run(["gcc", "-g", opt, "-o", str(out), str(source)], check=True)
        built[opt] = out
    return built


@dataclass
class Stopped:
    """A child process stopped under ptrace, with what the test needs to inspect it."""

    pid: int
    regs: dict[int, int]
    mem: int  # fd of /proc/PID/mem

    @property
    def stack_size(self) -> int:
        """The stack in use: from the stack pointer to the end of its mapping."""
        for line in Path(f"/proc/{self.pid}/maps").read_text().splitlines():
            if line.endswith("[stack]"):
                return int(line.split("-")[1].split()[0], 16) - self.regs[7]
        raise AssertionError("no [stack] mapping")

    def read_word(self, addr: int) -> int:
        data = os.pread(self.mem, 8, addr)
        if len(data) != 8:
            raise OSError(errno.EIO, f"short read at {addr:#x}")
        return int.from_bytes(data, "little")


@dataclass
class _Child:
    process: subprocess.Popen[str]
    seized: bool = False
    mem: int | None = None


def _wait_blocked(child: subprocess.Popen[str], spin: bool) -> int:
    """Wait until `child` is blocked in read(2) (in the signal handler if `spin`); its pid."""
    assert child.stdout is not None
    word, pid = child.stdout.readline().split()
    if spin:
        assert word == "spinning"
        time.sleep(0.05)  # let it reach the spin loop (not required for the checks)
        os.kill(int(pid), signal.SIGUSR1)
        word, _ = child.stdout.readline().split()
        assert word == "handler"
    else:
        assert word == "blocked"
    return int(pid)


@pytest.fixture
def stop() -> Iterator[Callable[..., Stopped]]:
    """Start a program, wait until it blocks, then SEIZE + INTERRUPT it."""
    children: list[_Child] = []

    def _stop(
        binary: Path, spin: bool = False, before: Callable[[int], None] | None = None
    ) -> Stopped:
        args = [str(binary), "spin"] if spin else [str(binary)]
        child = _Child(
            subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        )
        children.append(child)
        pid = _wait_blocked(child.process, spin)
        if before is not None:
            before(pid)
        try:
            ptrace(PTRACE_SEIZE, pid, 0, 0)
        except PtraceError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                pytest.skip(f"ptrace is not permitted here: {exc}")
            raise
        child.seized = True
        child.mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        ptrace(PTRACE_INTERRUPT, pid, 0, 0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSTOPPED(status)
        return Stopped(pid, regs_to_dwarf(ptrace_getregs(pid)), child.mem)

    yield _stop
    for child in children:
        if child.mem is not None:
            os.close(child.mem)
        if child.seized:
            with contextlib.suppress(PtraceError):
                ptrace(PTRACE_DETACH, child.process.pid, 0, 0)
        child.process.kill()
        child.process.communicate()  # reaps it and closes the pipes


def _load_bias(path: str, mapped_at: int) -> int:
    with open(path, "rb") as stream:
        loads = [seg for seg in ELFFile(stream).iter_segments() if seg["p_type"] == "PT_LOAD"]
    return mapped_at - (min(seg["p_vaddr"] for seg in loads) & ~0xFFF)


def build_module_map(pid: int, tables: dict[str, CallFrameTable]) -> ModuleMap:
    """Ranges of the files in `tables` (keyed by real path) as mapped in process `pid`."""
    spans: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6:
            continue
        path = os.path.realpath(fields[5])
        if path not in tables:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        span = spans.setdefault(path, [start, end, -1])
        span[0], span[1] = min(span[0], start), max(span[1], end)
        if int(fields[2], 16) == 0:
            span[2] = start
    return ModuleMap(
        (start, end, _load_bias(path, base), path, tables[path])
        for path, (start, end, base) in spans.items()
    )


class Symbols:
    """Function symbols of one ELF file (.symtab, else .dynsym), by link-time address."""

    def __init__(self, path: Path) -> None:
        self.funcs: list[tuple[int, int, str]] = []
        with open(path, "rb") as stream:
            elf = ELFFile(stream)
            for name in (".symtab", ".dynsym"):
                section = elf.get_section_by_name(name)
                if section is None:
                    continue
                for sym in section.iter_symbols():
                    if sym["st_info"]["type"] == "STT_FUNC" and sym["st_value"]:
                        self.funcs.append((sym["st_value"], sym["st_size"], sym.name))
                if self.funcs:
                    break

    def name_at(self, addr: int) -> str | None:
        for value, size, name in self.funcs:
            if value <= addr < value + max(size, 1):
                return name
        return None


def _names(frames: list[Frame], modules: ModuleMap, program: Path) -> list[str]:
    """Program function names for frames in the program, "libc" for frames in libc."""
    symbols = Symbols(program)
    names = []
    for frame in frames:
        entry = modules.lookup(frame.lookup_pc)
        assert entry is not None, f"frame at {frame.pc:#x} outside modules"
        if entry.path == str(LIBC.resolve()):
            names.append("libc")
        else:
            names.append(symbols.name_at(frame.lookup_pc - entry.load_bias) or "?")
    return names


@pytest.fixture(scope="module")
def libc_table() -> CallFrameTable:
    return CallFrameTable.from_elf(LIBC)


def _tables(binary: Path, libc_table: CallFrameTable) -> dict[str, CallFrameTable]:
    return {str(binary.resolve()): CallFrameTable.from_elf(binary), str(LIBC.resolve()): libc_table}


def _gdb_backtrace(pid: int) -> list[int | None] | None:
    """Frame pcs as gdb prints them; None where gdb prints none (its
    "<signal handler called>" frame, or a pc at the start of a source line)."""
    if shutil.which("gdb") is None:
        return None
    out = subprocess.run(
        [
            *("gdb", "-nx", "-batch", "-iex", "set debuginfod enabled off", "-p", str(pid)),
            *("-ex", "set backtrace past-main on", "-ex", "bt"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    pcs: list[int | None] = []
    for line in out.splitlines():
        match = re.match(r"#\d+\s+(?:(0x[0-9a-f]+) in )?", line)
        if match is not None:
            pcs.append(int(match[1], 16) if match[1] else None)
    return pcs or None


def _assert_same_pcs(gdb_pcs: list[int | None] | None, frames: list[Frame]) -> None:
    """Our frames have the pcs gdb printed (frame 0 aside: gdb restarts the syscall)."""
    if gdb_pcs is None:
        return
    assert len(frames) >= len(gdb_pcs)
    for gdb_pc, frame in zip(gdb_pcs[1:], frames[1:], strict=False):
        if gdb_pc is not None:
            assert gdb_pc == frame.pc


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_unwind_blocked_in_read(
    opt: str, binaries: dict[str, Path], stop: Callable[..., Stopped], libc_table: CallFrameTable
) -> None:
    gdb_pcs: list[int | None] | None = None

    def run_gdb(pid: int) -> None:
        nonlocal gdb_pcs
        gdb_pcs = _gdb_backtrace(pid)

    stopped: Stopped = stop(binaries[opt], before=run_gdb)
    modules = build_module_map(stopped.pid, _tables(binaries[opt], libc_table))
    frames = unwind(stopped.regs, modules, stopped.read_word, stopped.stack_size)
    names = _names(frames, modules, binaries[opt])

    assert frames[0].is_top and frames[0].pc == stopped.regs[16]
    assert names[0] == "libc"
    program_names = [name for name in names if name != "libc"]
    assert program_names == ["block", "inner", "middle", "outer", "main", "_start"]
    assert names[-1] == "_start"  # glibc's _start marks rip undefined: a clean end
    assert frames.cut is None
    cfas = [frame.cfa for frame in frames]
    assert all(cfa is not None for cfa in cfas)
    assert cfas == sorted(cfas) and len(set(cfas)) == len(cfas)
    for inner, outer in itertools.pairwise(frames):
        assert outer.regs[7] == inner.cfa  # the caller's rsp is the callee's CFA
        assert outer.is_return_address and not outer.is_top
    _assert_same_pcs(gdb_pcs, frames)


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_unwind_through_signal_frame(
    opt: str, binaries: dict[str, Path], stop: Callable[..., Stopped], libc_table: CallFrameTable
) -> None:
    gdb_pcs: list[int | None] | None = None

    def run_gdb(pid: int) -> None:
        nonlocal gdb_pcs
        gdb_pcs = _gdb_backtrace(pid)

    stopped: Stopped = stop(binaries[opt], spin=True, before=run_gdb)
    modules = build_module_map(stopped.pid, _tables(binaries[opt], libc_table))
    frames = unwind(stopped.regs, modules, stopped.read_word, stopped.stack_size)
    names = _names(frames, modules, binaries[opt])

    program_names = [name for name in names if name != "libc"]
    assert program_names[:2] == ["block", "handler"]
    assert program_names[-5:] == ["inner", "middle", "outer", "main", "_start"]
    trampolines = [i for i, frame in enumerate(frames) if frame.is_signal_frame]
    assert len(trampolines) == 1 and names[trampolines[0]] == "libc"
    assert names[trampolines[0] - 1] == "handler"
    # Usually the spin loop in inner; the signal may also land in inner's write().
    interrupted = frames[trampolines[0] + 1]
    # The interrupted pc is not a return address; all its registers were saved.
    assert not interrupted.is_return_address and interrupted.lookup_pc == interrupted.pc
    assert set(range(17)) <= set(interrupted.regs)
    _assert_same_pcs(gdb_pcs, frames)


def test_unwind_stops_outside_modules(
    binaries: dict[str, Path], stop: Callable[..., Stopped]
) -> None:
    """Without libc's CFI the walk ends cleanly at the first libc frame."""
    stopped: Stopped = stop(binaries["-O2"])
    program = binaries["-O2"].resolve()
    modules = build_module_map(stopped.pid, {str(program): CallFrameTable.from_elf(program)})
    frames = unwind(stopped.regs, modules, stopped.read_word, stopped.stack_size)
    assert len(frames) == 1 and frames[0].module is None and frames[0].cfa is None
    assert frames.cut is not None and frames.cut.startswith("no module for pc")


def test_unwind_stops_on_read_error(
    binaries: dict[str, Path], stop: Callable[..., Stopped]
) -> None:
    stopped: Stopped = stop(binaries["-O0"])
    tables = _tables(binaries["-O0"], CallFrameTable.from_elf(LIBC))
    modules = build_module_map(stopped.pid, tables)
    full = unwind(stopped.regs, modules, stopped.read_word, stopped.stack_size)

    def failing_read(addr: int) -> int:
        if addr >= full[2].cfa - 8:
            raise OSError(errno.EIO, "unreadable")
        return stopped.read_word(addr)

    assert full.cut is None
    cut = unwind(stopped.regs, modules, failing_read, stopped.stack_size)
    assert cut == full[:3] and cut.cut is not None and "cannot be read" in cut.cut
    # A stack of 16 bytes holds two return addresses at most: the walk says so.
    small = unwind(stopped.regs, modules, stopped.read_word, 16)
    assert small == full[:2] and small.cut == "more than 2 frames, more than its stack can hold"


def test_cfi_table_json_round_trip(libc_table: CallFrameTable) -> None:
    data = json.loads(json.dumps(libc_table.to_json()))
    again = CallFrameTable.from_json(data)
    assert len(again) == len(libc_table) > 1000
    assert again.to_json() == data
    symbols = Symbols(LIBC)
    for value, _size, _name in symbols.funcs[::50]:
        assert again.row_at(value) == libc_table.row_at(value)


def test_cfi_rows_of_a_function(binaries: dict[str, Path]) -> None:
    """At a function's first instruction the CFA is rsp+8 and the return address at CFA-8."""
    binary = binaries["-O0"]
    table = CallFrameTable.from_elf(binary)
    symbols = Symbols(binary)
    for name in ("inner", "middle", "outer", "main"):
        (start, size) = next((v, s) for v, s, n in symbols.funcs if n == name)
        row = table.row_at(start)
        assert row is not None and not row.is_signal_frame and row.ra_regno == 16
        assert (row.cfa.regno, row.cfa.offset) == (7, 8)
        assert row.regs[16].kind is RuleKind.OFFSET and row.regs[16].arg == -8
        # -O0: after "push rbp; mov rbp, rsp" the CFA is rbp+16, rbp saved at CFA-16.
        body = table.row_at(start + size - 2)
        assert body is not None and (body.cfa.regno, body.cfa.offset) == (6, 16)
        assert body.regs[6].arg == -16
    assert table.row_at(0) is None


def test_cfi_debug_frame(tmp_path: Path) -> None:
    """Code built without unwind tables is described by .debug_frame only."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    source = tmp_path / "f.c"
    source.write_text("int f(int x) { return x + 1; }\nint main(void) { return f(2); }\n")
    binary = tmp_path / "f"
    subprocess.run(
        ["gcc", "-g", "-O0", "-fno-asynchronous-unwind-tables", "-o", str(binary), str(source)],
        check=True,
    )
    with open(binary, "rb") as stream:
        elf = ELFFile(stream)
        assert elf.get_section_by_name(".debug_frame") is not None
    table = CallFrameTable.from_elf(binary)
    start = next(v for v, _s, n in Symbols(binary).funcs if n == "f")
    row = table.row_at(start)
    assert row is not None and (row.cfa.regno, row.cfa.offset) == (7, 8)


def _dwarf_exprs(binary: Path, function: str, variable: str) -> tuple[bytes, bytes, bytes]:
    """(frame base of `function`, location of its local `variable`, location of global `leak`)."""
    found: dict[str, bytes] = {}
    with open(binary, "rb") as stream:
        for cu in ELFFile(stream).get_dwarf_info().iter_CUs():
            for die in cu.iter_DIEs():
                name = die.attributes.get("DW_AT_name")
                if name is None:
                    continue
                if die.tag == "DW_TAG_variable" and name.value == b"leak":
                    found["leak"] = bytes(die.attributes["DW_AT_location"].value)
                if die.tag == "DW_TAG_subprogram" and name.value == function.encode():
                    found["frame_base"] = bytes(die.attributes["DW_AT_frame_base"].value)
                    for child in die.iter_children():
                        child_name = child.attributes.get("DW_AT_name")
                        if child_name is not None and child_name.value == variable.encode():
                            found["local"] = bytes(child.attributes["DW_AT_location"].value)
    return found["frame_base"], found["local"], found["leak"]


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_read_local_of_outer_frame(
    opt: str, binaries: dict[str, Path], stop: Callable[..., Stopped], libc_table: CallFrameTable
) -> None:
    """Evaluate real DWARF locations in an unwound frame: middle's `marker` and global `leak`."""
    stopped: Stopped = stop(binaries[opt])
    modules = build_module_map(stopped.pid, _tables(binaries[opt], libc_table))
    frames = unwind(stopped.regs, modules, stopped.read_word, stopped.stack_size)
    names = _names(frames, modules, binaries[opt])
    frame = frames[names.index("middle")]
    entry = modules.lookup(frame.lookup_pc)
    assert entry is not None
    bias = entry.load_bias
    frame_base_expr, marker_expr, leak_expr = _dwarf_exprs(binaries[opt], "middle", "marker")

    def ctx(frame_base: int | None = None) -> ExprContext:
        return ExprContext(
            regs=frame.regs,
            read_word=stopped.read_word,
            cfa=frame.cfa,
            frame_base=frame_base,
            load_bias=bias,
        )

    frame_base = evaluate(frame_base_expr, ctx())
    assert isinstance(frame_base, MemoryLocation)
    marker = evaluate(marker_expr, ctx(frame_base.addr))
    assert isinstance(marker, MemoryLocation)
    assert stopped.read_word(marker.addr) == 0x5EED0000
    leak = evaluate(leak_expr, ctx())
    assert isinstance(leak, MemoryLocation)
    assert stopped.read_word(leak.addr) == marker.addr


def test_cfi_expression_of_plt(binaries: dict[str, Path]) -> None:
    """The linker's PLT FDE computes the CFA with an expression of rsp and rip."""
    binary = binaries["-O2"]
    with open(binary, "rb") as stream:
        plt = ELFFile(stream).get_section_by_name(".plt")
        assert plt is not None
        slot = plt["sh_addr"] + 16  # the first PLT entry: jmp *GOT; push n; jmp .plt
    row = CallFrameTable.from_elf(binary).row_at(slot)
    assert row is not None and row.cfa.expr is not None and row.regs[16].arg == -8

    def cfa_at(pc: int) -> int:
        regs = {7: 0x7FFF0000, 16: pc}
        location = evaluate(row.cfa.expr, ExprContext(regs=regs, read_word=lambda _: 0))
        assert isinstance(location, MemoryLocation)
        return location.addr - regs[7]

    assert cfa_at(slot) == 8  # only the return address is on the stack
    assert cfa_at(slot + 11) == 16  # after "push n"


def test_cfi_skips_only_a_broken_fde(binaries: dict[str, Path], tmp_path: Path) -> None:
    """An FDE with an unknown CFA instruction is skipped alone; the others still decode."""
    binary = binaries["-O0"]
    symbols = Symbols(binary)
    inner = next(v for v, _s, n in symbols.funcs if n == "inner")
    middle = next(v for v, _s, n in symbols.funcs if n == "middle")
    with open(binary, "rb") as stream:
        elf = ELFFile(stream)
        eh_frame = elf.get_section_by_name(".eh_frame")
        assert eh_frame is not None
        fde = next(
            entry
            for entry in elf.get_dwarf_info().EH_CFI_entries()
            if "initial_location" in entry.header and entry["initial_location"] == inner
        )
    # gcc's FDE: length, CIE pointer, pc_begin, pc_range (4 bytes each), empty
    # augmentation data (1 byte), then the instructions.
    patched = bytearray(binary.read_bytes())
    first_instruction = eh_frame["sh_offset"] + fde.offset + 17
    assert patched[first_instruction] != 0
    patched[first_instruction] = 0x3F  # not a DW_CFA opcode
    broken = tmp_path / "broken"
    broken.write_bytes(patched)

    good, bad = CallFrameTable.from_elf(binary), CallFrameTable.from_elf(broken)
    assert (bad.skipped_fdes, len(bad)) == (1, len(good) - 1)
    assert bad.row_at(inner) is None and good.row_at(inner) is not None
    assert bad.row_at(middle) == good.row_at(middle)
