"""DebugIndex against real gcc output, checked with the compiler's own view
(offsetof/sizeof printed by the program), nm, readelf and addr2line."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import ekiden_trace.binary.dwarf.index as index_module
from ekiden_trace.binary.dwarf.build import build_index
from ekiden_trace.binary.dwarf.cache import CacheError, cache_dir, file_key, load_or_build
from ekiden_trace.binary.dwarf.index import FORMAT, DebugIndex, unit_names
from ekiden_trace.binary.dwarf.model import Variable
from ekiden_trace.binary.dwarf.sections import (
    MAX_ADDR,
    read_loc_v4,
    read_loclist,
    read_ranges_v4,
    read_rnglist,
)
from ekiden_trace.binary.dwarf.types import TypeInfo, byte_size, c_name, normalize_base_name, strip

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

HEADER = r"""
#include <stddef.h>
#define MARK(name) __asm__ volatile(".globl " #name "\n" #name ":\n\tnop")
#define KEEP(p) __asm__ volatile("" : : "r"(p) : "memory")
"""

MAIN_C = (
    HEADER
    + r"""
#include <stdio.h>
#include <string.h>

struct entry { char *key; int value; struct entry *next; };
struct table {
    struct entry **buckets;
    unsigned long nbuckets;
    unsigned long (*hash)(const char *);
};
union value { int i; double d; char *s; };
enum mode { MODE_OFF = -1, MODE_ON = 1, MODE_AUTO };
struct flags {
    unsigned ready : 1;
    signed level : 5;
    unsigned kind : 3;
    int count;
    unsigned long long wide : 40;
};
struct outer {
    int tag;
    union { int as_int; float as_float; };
    struct { char lo, hi; } pair;
    double tail[];
};
typedef struct table table_t;
struct opaque;

int counter = 1;
int shadow = 2;
static int hits;
static int state = 10;
char *names[64];
int grid[3][4];
const char *const greeting = "hello";
struct table *tables[2];
struct table **current;
enum mode mode = MODE_ON;
union value last_value;
struct flags flags;
struct outer outer;
table_t main_table;
unsigned long (*hasher)(const char *);
volatile unsigned char small;
struct opaque *handle;
void *anything;
void (*callback)(void);
int (*logger)(const char *, ...);
int (*old_style)();
int (*rowp)[4];
const int limits[2] = {1, 2};

int other_work(int n);

unsigned long hash_string(const char *s)
{
    unsigned long h = 5381;
    while (*s)
        h = h * 33 + (unsigned char)*s++;
    return h;
}

static inline int next_id(void)
{
    static int last;
    return ++last;
}

__attribute__((noinline, noclone)) int tick(int n)
{
    static int calls;
    calls += n;
    int counter = calls * 2;
    KEEP(&counter);
    MARK(mark_tick_body);
    {
        static int in_block = 5;
        int shadow = counter + 1;
        int only_here = shadow * 3;
        KEEP(&shadow);
        KEEP(&only_here);
        in_block += shadow + only_here;
        KEEP(&in_block);
        MARK(mark_tick_block);
    }
    hits++;
    return counter + hits + shadow;
}

__attribute__((noinline, noclone)) int report(void)
{
    MARK(mark_report);
    state++;
    KEEP(&state);
    return counter + shadow + state;
}

static void bits(const char *name, const void *p, size_t n)
{
    const unsigned char *b = p;
    int first = -1, count = 0;
    for (size_t i = 0; i < n * 8; i++)
        if (b[i / 8] >> (i % 8) & 1) {
            if (first < 0)
                first = (int)i;
            count++;
        }
    printf("bits.%s %d %d\n", name, first, count);
}

#define OFF(s, m) printf(#s "." #m " %zu\n", offsetof(struct s, m))
#define SIZE(s) printf(#s " %zu\n", sizeof(struct s))
#define BITS(m, v) do { struct flags f; memset(&f, 0, sizeof f); f.m = v; \
                        bits(#m, &f, sizeof f); } while (0)

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "layout") == 0) {
        OFF(entry, key); OFF(entry, value); OFF(entry, next); SIZE(entry);
        OFF(table, buckets); OFF(table, nbuckets); OFF(table, hash); SIZE(table);
        OFF(flags, count); SIZE(flags);
        OFF(outer, tag); OFF(outer, as_int); OFF(outer, as_float); OFF(outer, pair);
        OFF(outer, tail); SIZE(outer);
        printf("value %zu\n", sizeof(union value));
        BITS(ready, 1); BITS(level, -1); BITS(kind, 7); BITS(wide, 0xffffffffffULL);
        return 0;
    }
    current = tables;
    hasher = hash_string;
    main_table.hash = hash_string;
    int id = next_id() + next_id();
    return tick(argc) + report() + other_work(id) + (int)hasher(argv[0]) + small
           + (handle != 0);
}
"""
)

OTHER_C = (
    HEADER
    + r"""
extern int counter;
static int state = 20;
struct opaque { int a; long b; };
struct opaque the_opaque;

__attribute__((noinline)) int other_work(int n)
{
    MARK(mark_other);
    state += n;
    KEEP(&state);
    return state + counter + the_opaque.a;
}
"""
)


@dataclass
class Program:
    path: Path
    index: DebugIndex
    symbols: dict[str, int]
    file_symbols: dict[tuple[str, str], int]


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def compile_c(workdir: Path, sources: dict[str, str], *flags: str) -> Path:
    """Write sources under workdir and build them (paths as given) into workdir/prog."""
    for name, text in sources.items():
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_text(text)
    out = workdir / "prog"
    subprocess.run(["gcc", *flags, *sources, "-o", str(out)], cwd=workdir, check=True)
    return out


def nm_symbols(path: Path) -> dict[str, int]:
    """Symbol name -> address, from nm (local statics keep gcc's ".N" suffix)."""
    out = subprocess.run(["nm", str(path)], capture_output=True, text=True, check=True).stdout
    symbols = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            symbols[parts[2]] = int(parts[0], 16)
    return symbols


def symbols_by_file(path: Path) -> dict[tuple[str, str], int]:
    """(source file, name) -> address of local symbols, from readelf's FILE entries."""
    out = subprocess.run(
        ["readelf", "-sW", str(path)], capture_output=True, text=True, check=True
    ).stdout
    result = {}
    current = ""
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 8 or not parts[0].endswith(":"):
            continue
        if parts[3] == "FILE":
            current = parts[7]
        elif parts[4] == "LOCAL":
            result[(current, parts[7])] = int(parts[1], 16)
    return result


def load_program(workdir: Path, *flags: str) -> Program:
    path = compile_c(workdir, {"main.c": MAIN_C, "lib/other.c": OTHER_C}, *flags)
    return Program(path, DebugIndex.load(path), nm_symbols(path), symbols_by_file(path))


@pytest.fixture(params=["-gdwarf-5", "-gdwarf-4"])
def prog(request: pytest.FixtureRequest, tmp_path: Path) -> Program:
    return load_program(tmp_path, "-g", request.param, "-O2")


@pytest.fixture(params=["-O0", "-O2"])
def prog_any_opt(request: pytest.FixtureRequest, tmp_path: Path) -> Program:
    return load_program(tmp_path, "-g", request.param)


def the(index: DebugIndex, name: str, scope: str) -> Variable:
    found = [v for v in index.variables_named(name) if v.scope == scope]
    assert len(found) == 1, found
    return found[0]


def member_offset(types: dict[int, TypeInfo], tid: int, name: str) -> int | None:
    """Byte offset of a member, looking into anonymous members."""
    for m in types[strip(types, tid)].members:
        if m.name == name:
            return m.offset
        if m.name is None:
            inner = member_offset(types, m.type, name)
            if inner is not None:
                return m.offset + inner
    return None


def test_types_print_as_c(prog: Program) -> None:
    ix = prog.index
    types = ix.types

    def typename(var: str) -> str:
        return c_name(types, the(ix, var, "global").type)

    assert typename("names") == "char *[64]"
    assert c_name(types, the(ix, "names", "global").type, "names") == "char *names[64]"
    assert typename("grid") == "int [3][4]"
    assert typename("greeting") == "const char *const"
    assert typename("current") == "struct table **"
    assert typename("tables") == "struct table *[2]"
    assert typename("mode") == "enum mode"
    assert typename("last_value") == "union value"
    assert typename("main_table") == "table_t"
    assert typename("hasher") == "unsigned long (*)(const char *)"
    assert c_name(types, the(ix, "hasher", "global").type, "hasher") == (
        "unsigned long (*hasher)(const char *)"
    )
    assert typename("small") == "volatile unsigned char"
    assert typename("anything") == "void *"
    assert typename("callback") == "void (*)(void)"
    assert typename("logger") == "int (*)(const char *, ...)"
    assert typename("old_style") == "int (*)()"
    assert typename("rowp") == "int (*)[4]"
    assert typename("limits") == "const int [2]"
    assert c_name(types, the(ix, "rowp", "global").type, "rowp") == "int (*rowp)[4]"

    grid = types[the(ix, "grid", "global").type]
    assert (grid.kind, grid.count, grid.size) == ("array", 3, 48)
    assert grid.target is not None
    row = types[grid.target]
    assert (row.kind, row.count, c_name(types, row.target)) == ("array", 4, "int")

    table = ix.type_by_name("struct table")
    assert table is not None
    hash_member = next(m for m in types[table].members if m.name == "hash")
    assert c_name(types, hash_member.type, "hash") == "unsigned long (*hash)(const char *)"
    fn = types[types[hash_member.type].target or 0]
    assert fn.kind == "function" and not fn.variadic
    assert [c_name(types, p) for p in fn.params or []] == ["const char *"]

    main_table = the(ix, "main_table", "global").type
    assert strip(types, main_table) == table
    assert byte_size(types, main_table) == 24

    mode = types[ix.type_by_name("enum mode") or 0]
    assert mode.enumerators == {"MODE_OFF": -1, "MODE_ON": 1, "MODE_AUTO": 2}
    assert (mode.size, mode.encoding) == (4, "signed")

    outer = types[ix.type_by_name("struct outer") or 0]
    anonymous = [m for m in outer.members if m.name is None]
    assert [types[m.type].kind for m in anonymous] == ["union"]
    tail = next(m for m in outer.members if m.name == "tail")
    assert types[tail.type].count is None
    assert c_name(types, tail.type, "tail") == "double tail[]"

    ulong = ix.type_by_name("unsigned long")
    assert ulong is not None and ulong == ix.type_by_name("long unsigned int")
    assert (types[ulong].kind, types[ulong].size, types[ulong].encoding) == (
        "base",
        8,
        "unsigned",
    )
    assert types[ix.type_by_name("int") or 0].encoding == "signed"
    assert types[ix.type_by_name("char") or 0].encoding == "signed_char"
    assert ix.type_by_name("table_t") is not None
    assert ix.type_by_name("struct nosuch") is None

    for t in types.values():
        assert TypeInfo.from_json(t.to_json()) == t


def test_layout_matches_the_compiler(prog: Program) -> None:
    run = subprocess.run([str(prog.path), "layout"], capture_output=True, text=True, check=True)
    layout = {}
    for line in run.stdout.splitlines():
        key, *numbers = line.split()
        layout[key] = [int(n) for n in numbers]
    ix = prog.index
    types = ix.types
    checked = 0
    for key, values in layout.items():
        if key.startswith("bits."):
            flags = ix.type_by_name("struct flags") or 0
            member = next(m for m in types[flags].members if m.name == key[5:])
            assert [member.bit_offset, member.bit_size] == values, key
            assert member.offset == values[0] // 8
        elif "." in key:
            struct, field = key.split(".")
            tid = ix.type_by_name(f"struct {struct}") or 0
            assert member_offset(types, tid, field) == values[0], key
        elif key == "value":
            assert byte_size(types, ix.type_by_name("union value")) == values[0]
        else:
            assert byte_size(types, ix.type_by_name(f"struct {key}")) == values[0], key
        checked += 1
    assert checked == 21


def test_static_storage_matches_nm(prog: Program) -> None:
    ix = prog.index
    for name in ("counter", "shadow", "names", "grid", "greeting", "flags", "handle"):
        var = the(ix, name, "global")
        assert var.location == {"kind": "addr", "addr": prog.symbols[name]}, name
        assert var.external and var.cu == "main.c"

    counter = the(ix, "counter", "global")
    line = MAIN_C.splitlines().index("int counter = 1;") + 1
    assert (counter.decl_file, counter.decl_line) == (str(prog.path.parent / "main.c"), line)

    hits = the(ix, "hits", "file_static")
    assert hits.location["addr"] == prog.symbols["hits"]
    assert not hits.external

    for name, function in (("calls", "tick"), ("in_block", "tick"), ("last", "next_id")):
        var = the(ix, name, "function_static")
        assert var.function == function
        (symbol,) = [s for s in prog.symbols if s.startswith(name + ".")]
        assert var.location == {"kind": "addr", "addr": prog.symbols[symbol]}, name

    statics = {v.name for v in ix.globals()}
    assert {"counter", "hits", "calls", "in_block", "last", "state"} <= statics
    assert not any(v.scope in ("local", "parameter") for v in ix.globals())
    assert {v.scope for v in ix.variables_named("counter")} == {"global", "local"}
    assert "main.c" in ix.cus and "lib/other.c" in ix.cus


def test_locals_and_location_lists(prog: Program) -> None:
    ix = prog.index
    tick = ix.function_at(prog.symbols["tick"])
    assert tick is not None and tick.name == "tick" and tick.cu == "main.c"
    assert tick.frame_base is not None
    local = the(ix, "counter", "local")
    assert local.function == "tick" and local.inlined_into is None
    assert local.location["kind"] in ("expr", "list")

    # At -O2 parameters live in registers that change: a location list whose
    # ranges (base address applied) lie inside the function's code.
    lists = [
        v
        for v in ix.variables
        if v.scope in ("local", "parameter") and v.location["kind"] == "list"
    ]
    assert lists
    for var in lists:
        owner = next(f for f in ix.functions if f.name == (var.inlined_into or var.function))
        for lo, hi, expr in var.location["ranges"]:
            assert any(flo <= lo < hi <= fhi for flo, fhi in owner.ranges), (var, lo, hi)
            assert bytes.fromhex(expr)
    (n,) = [v for v in ix.variables_named("n") if v.function == "tick"]
    assert n.scope == "parameter" and n.location["kind"] == "list"


def test_inlined_function(prog: Program) -> None:
    ix = prog.index
    main = ix.function_at(prog.symbols["main"])
    assert main is not None and main.name == "main"
    inlined = [s for s in ix.scopes if s.kind == "inlined" and s.name == "next_id"]
    assert inlined
    pc = inlined[0].ranges[0][0]
    assert ix.inline_chain_at(pc)[0] == "next_id"
    assert ix.function_at(pc) == main
    last = ix.resolve(pc, "last")
    assert last is not None and last.scope == "function_static" and last.function == "next_id"
    h = [v for v in ix.variables_named("h") if v.inlined_into == "main"]
    assert all(v.function == "hash_string" for v in h)


def test_resolve_follows_c_scoping(prog_any_opt: Program) -> None:
    ix = prog_any_opt.index
    body = prog_any_opt.symbols["mark_tick_body"]
    block = prog_any_opt.symbols["mark_tick_block"]
    report = prog_any_opt.symbols["mark_report"]

    def scope_of(pc: int, name: str) -> tuple[str, str | None]:
        var = ix.resolve(pc, name)
        assert var is not None, name
        return var.scope, var.function

    assert scope_of(body, "counter") == ("local", "tick")
    assert scope_of(block, "counter") == ("local", "tick")
    assert scope_of(report, "counter") == ("global", None)
    assert scope_of(block, "shadow") == ("local", "tick")
    assert scope_of(body, "shadow") == ("global", None)
    assert scope_of(block, "in_block") == ("function_static", "tick")
    assert scope_of(body, "in_block") == ("function_static", "tick")
    assert scope_of(body, "calls") == ("function_static", "tick")
    assert scope_of(block, "only_here") == ("local", "tick")
    assert scope_of(report, "hits") == ("file_static", None)
    assert scope_of(body, "n") == ("parameter", "tick")
    assert ix.resolve(body, "nosuch") is None
    # Not in scope at the mark, but the only one in tick's blocks: the
    # fallback for marks that -O2 places just outside their block.
    assert scope_of(body, "only_here") == ("local", "tick")
    assert ix.resolve(report, "only_here") is None
    assert ix.resolve(report, "in_block") is None
    assert ix.resolve(0, "counter") == ix.resolve(report, "counter")
    assert ix.resolve(0, "hits") is None  # a file static needs its file


def test_same_named_file_statics(prog: Program) -> None:
    ix = prog.index
    main_state = prog.file_symbols[("main.c", "state")]
    other_state = prog.file_symbols[("other.c", "state")]
    assert main_state != other_state

    def addr(var: Variable | None) -> int:
        assert var is not None and var.scope == "file_static"
        return int(var.location["addr"])

    assert addr(ix.resolve(0, "state", "main.c")) == main_state
    assert addr(ix.resolve(0, "state", "lib/other.c")) == other_state
    assert addr(ix.resolve(0, "state", "other.c")) == other_state  # unique basename
    assert addr(ix.resolve(prog.symbols["mark_report"], "state")) == main_state
    assert addr(ix.resolve(prog.symbols["mark_other"], "state")) == other_state
    # other.c's `extern int counter;` is main.c's definition.
    counter = ix.resolve(prog.symbols["mark_other"], "counter")
    assert counter is not None and counter.cu == "main.c" and counter.scope == "global"
    assert ix.resolve(0, "counter", "lib/other.c") == counter
    assert ix.resolve(0, "hits", "lib/other.c") is None


def test_complete_definition_preferred(prog: Program) -> None:
    ix = prog.index
    types = ix.types
    opaque = ix.type_by_name("struct opaque")
    assert opaque is not None and types[opaque].size == 16
    # main.c only declares it; its pointer's target is completed from other.c.
    target = types[the(ix, "handle", "global").type].target
    assert target is not None and target != opaque
    assert types[target].size == 16 and not types[target].declaration
    assert [m.name for m in types[target].members] == ["a", "b"]


def test_line_at_matches_addr2line(prog: Program) -> None:
    ix = prog.index
    addrs = sorted({pc for f in ix.functions for lo, hi in f.ranges for pc in range(lo, hi, 3)})
    out = subprocess.run(
        ["addr2line", "-e", str(prog.path), *(hex(a) for a in addrs)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(out) == len(addrs)
    for pc, line in zip(addrs, out, strict=True):
        file, _, number = line.split(" ")[0].rpartition(":")
        assert ix.line_at(pc) == (os.path.normpath(file), int(number)), hex(pc)
    assert ix.line_at(0) is None


def test_stripped_binary(tmp_path: Path) -> None:
    path = compile_c(tmp_path, {"main.c": MAIN_C, "lib/other.c": OTHER_C}, "-g", "-O2")
    subprocess.run(["strip", str(path)], check=True)
    ix = DebugIndex.load(path)
    assert not ix.has_debug_info
    assert ix.build_id == file_key(path)
    assert ix.cus == [] and list(ix.variables) == [] and ix.functions == []
    assert ix.resolve(0x1000, "counter") is None
    assert ix.function_at(0x1000) is None and ix.line_at(0x1000) is None
    assert ix.type_by_name("int") is None
    assert ix.globals() == [] and ix.inline_chain_at(0x1000) == []


def test_library_without_debug_info(cache_home: Path) -> None:
    libc = Path("/lib/x86_64-linux-gnu/libc.so.6")
    if not libc.exists():
        pytest.skip("no x86-64 glibc here")
    ix = DebugIndex.load(libc)
    assert not ix.has_debug_info and ix.cus == []
    assert not (cache_home / "ekiden-trace").exists()  # nothing worth caching


def test_cache_warm_path(tmp_path: Path, cache_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = compile_c(tmp_path, {"main.c": MAIN_C, "lib/other.c": OTHER_C}, "-g", "-O2")
    calls = []

    def counting(p: str) -> dict[str, object]:
        calls.append(p)
        return build_index(p)

    monkeypatch.setattr(index_module, "build_index", counting)
    cold = DebugIndex.load(path)
    warm = DebugIndex.load(path)
    assert len(calls) == 1
    assert list(warm.variables) == list(cold.variables)
    assert warm.types == cold.types and warm.functions == cold.functions

    directory = cache_home / "ekiden-trace"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    entry = directory / f"{file_key(path)}-dwarf-v{FORMAT}.json"
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert [p.name for p in directory.iterdir()] == [entry.name]

    entry.write_text('{"truncated": ')
    rebuilt = DebugIndex.load(path)
    assert len(calls) == 2
    assert list(rebuilt.variables) == list(cold.variables)

    entry.write_text('{"has_debug_info": true, "format": 0}')  # an older layout
    DebugIndex.load(path)
    assert len(calls) == 3


def test_cache_generic_entries(cache_home: Path) -> None:
    built = []

    def builder() -> dict[str, object]:
        built.append(1)
        return {"symbols": [1, 2, 3]}

    assert load_or_build("abc-symbols-v1", builder) == {"symbols": [1, 2, 3]}
    assert load_or_build("abc-symbols-v1", builder) == {"symbols": [1, 2, 3]}
    assert len(built) == 1
    assert cache_dir() == cache_home / "ekiden-trace"
    with pytest.raises(CacheError):
        load_or_build("../escape", builder)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_cache_dir_owned_by_someone_else(cache_home: Path) -> None:
    directory = cache_home / "ekiden-trace"
    directory.mkdir(parents=True, mode=0o700)
    os.chown(directory, 12345, 12345)
    with pytest.raises(CacheError):
        cache_dir()


def test_file_key(tmp_path: Path) -> None:
    path = compile_c(tmp_path, {"main.c": MAIN_C, "lib/other.c": OTHER_C}, "-g", "-O2")
    notes = subprocess.run(
        ["readelf", "-n", str(path)], capture_output=True, text=True, check=True
    ).stdout
    build_id = next(line.split()[-1] for line in notes.splitlines() if "Build ID" in line)
    assert file_key(path) == build_id
    text = tmp_path / "notes.txt"
    text.write_bytes(b"not an ELF file")
    assert file_key(text) == hashlib.sha256(b"not an ELF file").hexdigest()


def test_base_type_names() -> None:
    cases = {
        "long unsigned int": "unsigned long",
        "long int": "long",
        "short int": "short",
        "short unsigned int": "unsigned short",
        "long long unsigned int": "unsigned long long",
        "unsigned int": "unsigned int",
        "signed char": "signed char",
        "char": "char",
        "__int128 unsigned": "unsigned __int128",
        "long double": "long double",
        "_Bool": "_Bool",
    }
    assert {gcc: normalize_base_name(gcc) for gcc in cases} == cases


def test_list_decoders_apply_base_addresses() -> None:
    """Entry kinds gcc does not emit for these programs, hand-encoded."""
    addr_table = {0: 0x5000, 1: 0x6000}

    def u64(n: int) -> bytes:
        return n.to_bytes(8, "little")

    expr = bytes([0x91, 0x10])  # DW_OP_fbreg 16
    loclist = (
        bytes([4, 0x10, 0x20, 2]) + expr  # offset_pair from the CU base
        + bytes([1, 0])  # base_addressx 0
        + bytes([4, 0x10, 0x20, 2]) + expr
        + bytes([3, 1, 0x08, 2]) + expr  # startx_length
        + bytes([6]) + u64(0x9000)  # base_address
        + bytes([4, 0, 4, 2]) + expr
        + bytes([8]) + u64(0xA000) + bytes([0x10, 2]) + expr  # start_length
        + bytes([5, 2]) + expr  # default_location
        + bytes([0])
    )  # fmt: skip
    assert read_loclist(loclist, 0, 0x1000, addr_table.__getitem__) == [
        [0x1010, 0x1020, "9110"],
        [0x5010, 0x5020, "9110"],
        [0x6000, 0x6008, "9110"],
        [0x9000, 0x9004, "9110"],
        [0xA000, 0xA010, "9110"],
        [0, MAX_ADDR, "9110"],
    ]
    rnglist = (
        bytes([4, 0x00, 0x10])  # offset_pair
        + bytes([5]) + u64(0x7000)  # base_address
        + bytes([4, 0x00, 0x10])
        + bytes([2, 0, 1])  # startx_endx
        + bytes([6]) + u64(0x8000) + u64(0x8004)  # start_end
        + bytes([0])
    )  # fmt: skip
    assert read_rnglist(rnglist, 0, 0x1000, addr_table.__getitem__) == [
        [0x1000, 0x1010],
        [0x7000, 0x7010],
        [0x5000, 0x6000],
        [0x8000, 0x8004],
    ]
    v4 = u64(0x10) + u64(0x20) + u64(MAX_ADDR) + u64(0x4000) + u64(0x10) + u64(0x20) + u64(0) * 2
    assert read_ranges_v4(v4, 0, 0x1000) == [[0x1010, 0x1020], [0x4010, 0x4020]]
    loc_v4 = (
        u64(0x10) + u64(0x20) + len(expr).to_bytes(2, "little") + expr
        + u64(MAX_ADDR) + u64(0x4000)
        + u64(0x10) + u64(0x20) + len(expr).to_bytes(2, "little") + expr
        + u64(0) * 2
    )  # fmt: skip
    assert read_loc_v4(loc_v4, 0, 0x1000) == [[0x1010, 0x1020, "9110"], [0x4010, 0x4020, "9110"]]


def test_units_that_share_a_basename_are_named_by_their_folders() -> None:
    # b/util.c and c/util.c, each compiled in its own folder (DW_AT_name util.c), or
    # both from /src (DW_AT_name a/util.c): named by the path below the folder they
    # share; a unit whose basename is its own keeps its name as compiled
    assert unit_names(["util.c", "util.c", "main.c"], ["/src/b", "/src/c/d", "/src"]) == [
        "b/util.c",
        "c/d/util.c",
        "main.c",
    ]
    assert unit_names(["a/util.c", "b/util.c"], ["/src", "/src"]) == ["a/util.c", "b/util.c"]
    assert unit_names(["/abs/x.c"], [None]) == ["/abs/x.c"]
    # with no comp_dir to place them by, DW_AT_name is all there is
    assert unit_names(["util.c", "util.c"], [None, None]) == ["util.c", "util.c"]
