"""Measure the capture prototype (walk.c) on a running kvstore or biglist server.

    python bench/proto/capture.py kv|list PID BINARY MODE

Builds walk.c, stops PID with SIGSTOP, walks its state in MODE (see walk.c) from the
global `table` (kvstore) or `head` (bench/biglist.c), writes every object back where it
was read as the restore's iovecs would (write_back), resumes it and prints one JSON
line; one mode per run, so the peak RSS is that mode's.  The recipes below are the
v1 types of kvstore and biglist.
"""

from __future__ import annotations

import ctypes as C
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Field(C.Structure):
    _fields_ = [("off", C.c_uint32), ("target", C.c_int32), ("count_off", C.c_int32)]


class Recipe(C.Structure):
    _fields_ = [("size", C.c_uint32), ("nptr", C.c_uint32), ("ptrs", C.POINTER(Field))]


class Out(C.Structure):
    _fields_ = [
        *((name, C.c_void_p) for name in ("addr", "type", "size", "data_off", "edge")),
        *((name, C.c_uint64) for name in ("n", "cap", "nedge", "edgecap")),
        ("arena", C.c_void_p),
        *((name, C.c_uint64) for name in ("arena_len", "arena_cap", "syscalls", "bytes_read")),
    ]


# (size, [(offset, target recipe or -1 for a C string, offset of an array length or -1)])
RECIPES = {
    "kv": (
        "table",
        [(32, [(0, 1, 8)]), (8, [(0, 2, -1)]), (24, [(0, -1, -1), (8, -1, -1), (16, 2, -1)])],
    ),
    "list": ("head", [(24, [(0, -1, -1), (16, 0, -1)])]),
}
MODES = ["chunks+hash", "levels+hash", "chunks+granules", "levels+granules"]


def _recipes(kind: str) -> tuple[str, C.Array]:
    symbol, specs = RECIPES[kind]
    recipes = []
    for size, fields in specs:
        array = (Field * len(fields))(*(Field(*f) for f in fields))
        recipes.append(Recipe(size, len(fields), array))
    table = (Recipe * len(recipes))(*recipes)
    table._keep = recipes  # type: ignore[attr-defined]
    return symbol, table


def _root(pid: int, binary: str, symbol: str) -> int:
    """The value of a pointer global of a running PIE."""
    nm = subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout
    offset = next(
        int(line.split()[0], 16) for line in nm.splitlines() if line.endswith(f" {symbol}")
    )
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    base = min(int(line.split("-")[0], 16) for line in maps if line.endswith(binary))
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(base + offset)
        return int.from_bytes(mem.read(8), "little")


def main() -> None:
    kind, pid, binary, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    with tempfile.TemporaryDirectory() as tmp:
        lib_path = Path(tmp) / "walk.so"
        subprocess.run(
            ["gcc", "-O2", "-shared", "-fPIC", str(HERE / "walk.c"), "-o", str(lib_path)],
            check=True,
        )
        symbol, recipes = _recipes(kind)
        lib = C.CDLL(str(lib_path))
        out = Out()
        os.kill(pid, signal.SIGSTOP)
        try:
            root = _root(pid, binary, symbol)
            started = time.perf_counter()
            lib.walk(pid, mode, recipes, C.c_uint64(root), 0, C.byref(out))
            seconds = time.perf_counter() - started
            lib.write_back.restype = C.c_double
            write_seconds = lib.write_back(pid, C.byref(out))
        finally:
            os.kill(pid, signal.SIGCONT)
        figures = {
            "mode": MODES[mode & 3] + ("+sorted" if mode & 4 else ""),
            "objects": out.n,
            "pointer slots": out.nedge,
            "arena MB": round(out.arena_len / 1e6, 1),
            "syscalls": out.syscalls,
            "read MB": round(out.bytes_read / 1e6, 1),
            "seconds": round(seconds, 3),
            "read seconds": round(C.c_double.in_dll(lib, "read_seconds").value, 3),
            "us per object": round(seconds / out.n * 1e6, 3),
            "write-back seconds": round(write_seconds, 3),
            "peak RSS MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
        print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
