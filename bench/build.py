"""Building what the benchmarks run: fixtures (marked and unmarked) through the Makefile."""

from __future__ import annotations

import subprocess
from pathlib import Path

from procs import REPO

FIXTURES = REPO / "fixtures"


def make(*targets: Path) -> str | None:
    """`make` the given files; None on success, else the last lines of its output."""
    names = [str(t.relative_to(REPO)) for t in targets]
    done = subprocess.run(["make", "-C", str(REPO), *names], capture_output=True, text=True)
    if done.returncode == 0:
        return None
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    return " / ".join(tail) or f"make exited with {done.returncode}"


def fixture(name: str, version: str) -> Path:
    """fixtures/NAME/VERSION, built if needed (VERSION such as v1 or v1-unmarked)."""
    path = FIXTURES / name / version
    error = make(path)
    if error:
        raise RuntimeError(f"cannot build {path.relative_to(REPO)}: {error}")
    return path


def ftpd_unavailable() -> str | None:
    """Why the ftpd benchmarks cannot run, or None when its binaries build."""
    if not (FIXTURES / "ftpd" / "v1.c").exists():
        return "fixtures/ftpd/v1.c is missing"
    if not (FIXTURES / "ftpd" / "v2.c").exists():
        return "fixtures/ftpd/v2.c is missing"
    error = make(*(FIXTURES / "ftpd" / v for v in ("v1", "v2", "v1-unmarked")))
    return f"building fixtures/ftpd failed: {error}" if error else None


def fixture_cflags() -> list[str]:
    """The Makefile's FIXTURE_CFLAGS, with -I made absolute."""
    done = subprocess.run(
        [
            "make",
            "-s",
            "--no-print-directory",
            "-C",
            str(REPO),
            "--eval",
            "print-fixture-cflags: ; @echo $(FIXTURE_CFLAGS)",
            "print-fixture-cflags",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    flags = done.stdout.split()
    return [
        f"-I{REPO / flags[i + 1]}" if f == "-I" else f
        for i, f in enumerate(flags)
        if not (i > 0 and flags[i - 1] == "-I")
    ]


def kvstore_buckets(directory: Path, nbuckets: int, versions: tuple[str, ...]) -> list[Path]:
    """kvstore versions built from their sources with NBUCKETS set to nbuckets instead of 64,
    into directory (same flags as `make fixtures`)."""
    built = []
    for version in versions:
        source = (FIXTURES / "kvstore" / f"{version}.c").read_text()
        if "#define NBUCKETS 64 " not in source:
            raise RuntimeError(f"fixtures/kvstore/{version}.c no longer defines NBUCKETS 64")
        target = directory / f"{version}.c"
        target.write_text(source.replace("#define NBUCKETS 64 ", f"#define NBUCKETS {nbuckets} "))
        binary = directory / version
        subprocess.run(["gcc", *fixture_cflags(), str(target), "-o", str(binary)], check=True)
        built.append(binary)
    return built


def biglist(directory: Path) -> list[Path]:
    """bench/biglist.c built as version 1 and version 2 into directory (same flags as
    `make fixtures`)."""
    source = REPO / "bench" / "biglist.c"
    built = []
    for version in (1, 2):
        binary = directory / f"biglist-v{version}"
        flags = [*fixture_cflags(), f"-DLIST_VERSION={version}"]
        subprocess.run(["gcc", *flags, str(source), "-o", str(binary)], check=True)
        built.append(binary)
    return built
