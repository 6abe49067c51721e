"""Section 4: planning time of `points` and `diff` on a large synthetic binary, cold and warm."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import synthetic
from ab import interleaved
from procs import REPO, run_measured, tool_argv
from report import Row, SectionResult
from settings import Settings
from stats import summarize

SECTION = "4 planning"
WARM_GOAL = 0.3  # seconds
TIMEOUT = 300.0


def _build(directory: Path, s: Settings) -> tuple[Path, Path]:
    """Write and compile both versions of the synthetic program (gcc -g -O2 -I probes)."""
    binaries = []
    for version in (1, 2):
        source = synthetic.write(directory, s.synthetic_types, s.synthetic_globals, version)
        binary = directory / f"synthetic-v{version}"
        subprocess.run(
            ["gcc", "-g", "-O2", "-I", str(REPO / "probes"), str(source), "-o", str(binary)],
            check=True,
        )
        binaries.append(binary)
    return binaries[0], binaries[1]


def _debug_info_bytes(binary: Path) -> int:
    from elftools.elf.elffile import ELFFile

    with binary.open("rb") as f:
        section = ELFFile(f).get_section_by_name(".debug_info")
        return section.data_size if section else 0


class _Timer:
    """Timed runs of one command; `cold` uses a fresh cache directory, `warm` the last one,
    `replan` the last one without its cached plans (the DWARF indexes stay)."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.directory = directory
        self.args = args
        self.caches = 0
        self.cache: Path | None = None

    def _timed(self) -> float:
        env = {**os.environ, "XDG_CACHE_HOME": str(self.cache)}
        run = run_measured(tool_argv(*self.args), TIMEOUT, env, rss=False)
        # 10: diff says a transformer is needed; 9: it lists state v2 drops (the synthetic
        # v2 drops a tag and no transformer file acknowledges it)
        if run.returncode not in (0, 9, 10):
            raise RuntimeError(f"{' '.join(self.args[:1])} failed: {run.stderr.strip()[-300:]}")
        return run.wall

    def cold(self) -> float:
        self.caches += 1
        self.cache = self.directory / f"cache-{self.args[0]}-{self.caches}"
        self.cache.mkdir()
        return self._timed()

    def warm(self) -> float:
        if self.cache is None:
            self.cold()
        return self._timed()

    def replan(self) -> float:
        if self.cache is None:
            self.cold()
        for entry in (self.cache / "ekiden-trace").glob("*-plan.json"):
            entry.unlink()
        return self._timed()


def run(s: Settings) -> SectionResult:
    """points and diff, cold and warm, interleaved."""
    result = SectionResult()
    with tempfile.TemporaryDirectory(prefix="ekiden-bench-synth-") as tmp:
        directory = Path(tmp)
        print("  building the synthetic binaries", flush=True)
        v1, v2 = _build(directory, s)
        size = _debug_info_bytes(v1)
        points = _Timer(directory, "points", str(v1))
        diff = _Timer(directory, "diff", str(v1), str(v2))
        samples = interleaved(
            s.planning_repeats, points.cold, points.warm, diff.cold, diff.warm, diff.replan
        )
    result.add(
        Row(
            SECTION,
            "synthetic binary",
            text=f"{s.synthetic_types:,} struct types, {s.synthetic_globals:,} globals, "
            f".debug_info {size / 1e6:.2f} MB",
        )
    )
    names = ("points, cold", "points, warm", "diff, cold", "diff, warm", "diff, warm, new plan")
    for name, values in zip(names, samples, strict=True):
        summary = summarize(values)
        warm = name.endswith("warm")
        result.add(
            Row(
                SECTION,
                name,
                summary,
                "s",
                goal=f"≤ {WARM_GOAL:g} s" if warm else "",
                met=summary.median <= WARM_GOAL if warm else None,
            )
        )
    result.notes.append(
        f"**Planning time.** bench/synthetic.py writes a C program with "
        f"{s.synthetic_types:,} struct types (scalars, arrays, enums, unions, copies of "
        f"small types, and pointers that make the types a binary tree), "
        f"{s.synthetic_globals:,} globals, a function per {synthetic.FUNCTION_EVERY} types, "
        f"four 40 KB tagged structs whose fields reach every type through that tree (with "
        f"array hints), a tagged local and three update points; version 2 adds a field to "
        f"every 7th type, widens one in every 11th, drops a tag and adds one. Both are built "
        f"with `gcc -g -O2 -I probes`. Each figure is the wall time of the whole command "
        f"(`python -m ekiden_trace points V1`, `... diff V1 V2`), Python's start-up "
        f"included, as a user would see it: cold with XDG_CACHE_HOME set to a fresh empty "
        f"directory, warm running again with that cache filled (the DWARF indexes of both "
        f'binaries and the plan of the pair), and "warm, new plan" with the DWARF indexes '
        f"cached but the plan removed (what a new transformer file or a new version of "
        f"ekiden-trace costs). The five kinds are interleaved in rotating order."
    )
    return result
