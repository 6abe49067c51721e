#!/usr/bin/env python3
"""`make bench`: run the benchmark suite, print its table and write BENCHMARKS.md.

    bench/run.py                     the full suite (about 10-14 minutes)
    bench/run.py --quick             fewer repeats, smaller sizes (about a minute)
    bench/run.py --only pause,client one or more sections

BENCHMARKS.md is written only by a full run of every section, unless --out says
where to write. Every child process is killed at the end, on errors and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import clientview
import instructions
import machine
import overhead
import pause
import planning
import procs
import scaling
from report import Row, SectionResult, markdown_document, text_table
from settings import FULL, QUICK, Settings

SECTIONS: dict[str, Callable[[Settings], SectionResult]] = {
    "overhead": overhead.run,
    "pause": pause.run,
    "client": clientview.run,
    "scaling": scaling.run,
    "planning": planning.run,
    "instructions": instructions.run,
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller sizes")
    parser.add_argument(
        "--only", help=f"comma-separated sections to run, from: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    args = parser.parse_args(argv)
    args.sections = args.only.split(",") if args.only else list(SECTIONS)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.out is None and not args.quick and not args.only:
        args.out = procs.REPO / "BENCHMARKS.md"
    return args


def _run_section(name: str, settings: Settings) -> tuple[SectionResult, bool]:
    """One section's result; a failed section becomes one row saying why."""
    started = time.monotonic()
    print(f"== {name}", flush=True)
    try:
        result = SECTIONS[name](settings)
        ok = result.failures == 0
    except Exception as exc:  # a section's failure must not lose the others' figures
        traceback.print_exc()
        result, ok = SectionResult([Row(name, "section failed", text=f"error: {exc}")]), False
    finally:
        procs.kill_all()
    print(text_table(result.rows), flush=True)
    print(f"   ({name}: {time.monotonic() - started:.0f} s)", flush=True)
    return result, ok


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    procs.install_cleanup()
    settings = QUICK if args.quick else FULL
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    rows: list[Row] = []
    notes: list[str] = []
    failed = False
    try:
        for name in args.sections:
            result, ok = _run_section(name, settings)
            rows += result.rows
            notes += result.notes
            failed |= not ok
    finally:
        procs.kill_all()
    elapsed = time.monotonic() - started
    print(f"\n== all results ({elapsed / 60:.1f} min)\n")
    print(text_table(rows))
    if args.out is not None:
        command = "make bench" if not args.quick and not args.only else " ".join(sys.argv)
        notes.append(f"The whole run took {elapsed / 60:.1f} minutes.")
        described = machine.describe()
        described["load average"] = (
            f"{load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (1 minute; "
            "other work on the machine shows here)"
        )
        appendix = (procs.REPO / "bench" / "analysis.md").read_text()
        args.out.write_text(markdown_document(described, rows, notes, command, appendix))
        print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
