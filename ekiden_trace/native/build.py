"""Build and load the compiled core: every `*.c` of this package as one shared library.

The library is compiled with the system's C compiler into the cache directory,
named by a hash of the sources and flags, so an upgraded tool never loads a stale
one.  `EKIDEN_TRACE_ENGINE=python` turns the core off (the reference path runs);
`EKIDEN_TRACE_ENGINE=compiled` makes its absence an error (for tests and benches).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from ekiden_trace.binary.dwarf.cache import CacheError, cache_dir
from ekiden_trace.errors import EkidenError

SOURCES = Path(__file__).resolve().parent
CFLAGS = ("-std=gnu11", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror")
ENGINE_VARIABLE = "EKIDEN_TRACE_ENGINE"


class CoreUnavailable(EkidenError):
    """The compiled core was required (EKIDEN_TRACE_ENGINE=compiled) but cannot be built."""


def engine_choice() -> str:
    """'auto' (the default), 'python' or 'compiled', from EKIDEN_TRACE_ENGINE."""
    choice = os.environ.get(ENGINE_VARIABLE, "auto").strip().lower() or "auto"
    if choice not in ("auto", "python", "compiled"):
        raise EkidenError(f"{ENGINE_VARIABLE} must be auto, python or compiled, not {choice!r}.")
    return choice


def core() -> ctypes.CDLL | None:
    """The compiled core, or None when it is turned off or cannot be built (then the
    reference path runs; `why_not()` says why)."""
    if engine_choice() == "python":
        return None
    library, _ = _load()
    if library is None and engine_choice() == "compiled":
        raise CoreUnavailable(f"the compiled engine is required but {why_not()}.")
    return library


Signatures = dict[str, tuple[Any, Sequence[Any]]]
"""C function name -> (ctypes result type, ctypes argument types)."""


def declare(library: ctypes.CDLL, signatures: Signatures) -> ctypes.CDLL:
    """Give the core's functions their C signatures; the library, for chaining."""
    for name, (restype, argtypes) in signatures.items():
        function = getattr(library, name)
        function.restype, function.argtypes = restype, list(argtypes)
    return library


def why_not() -> str | None:
    """Why the compiled core is not used, or None when it is."""
    if engine_choice() == "python":
        return f"{ENGINE_VARIABLE}=python"
    return _load()[1]


@cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    sources = sorted(SOURCES.glob("*.c"))
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if compiler is None:
        return None, "no C compiler was found to build it (install gcc)"
    digest = hashlib.sha256(" ".join((compiler, *CFLAGS)).encode())
    for source in sources:
        digest.update(source.read_bytes())
    try:
        target = cache_dir() / "core" / f"{digest.hexdigest()[:24]}.so"
    except (CacheError, OSError) as why:
        return None, f"the cache directory is unusable ({why})"
    if not target.exists():
        failure = _compile(compiler, sources, target)
        if failure is not None:
            return None, failure
    return ctypes.CDLL(str(target), use_errno=True), None


def _compile(compiler: str, sources: list[Path], target: Path) -> str | None:
    """Compile into a temporary file renamed into place (another tool may race us)."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.part")
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *CFLAGS, *map(str, sources), "-o", partial],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no message"])[0]
            return f"{compiler} could not build it ({first})"
        os.rename(partial, target)
        return None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
