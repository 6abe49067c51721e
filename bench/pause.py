"""Section 2: the update pause, next to its floor (exec in place to the first mark)."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import build
import ftp
from ab import interleaved, ratios
from floor import floor_sample
from report import Row, SectionResult
from settings import Settings
from stats import scaled, summarize
from targets import Target, counter, ftpd, kvstore

from ekiden_trace.binary.program import Program

SECTION = "2 pause"
RATIO_GOAL = 2.5
PAUSE_GOAL_MS = 5.0
RSS_GOAL_MB = 100.0  # the tool's own peak RSS for a small state
PHASES = ("capture", "exec", "restore")  # the pause; "plan" and "wait" come before it


def _measure(t: Target, s: Settings, result: SectionResult, phase_lines: list[str]) -> None:
    print(f"  {t.name}", flush=True)
    old, new = Program(str(t.old)), Program(str(t.new))
    updates, floors, floors_sys = interleaved(
        s.pause_repeats,
        t.sample,
        lambda: floor_sample(t.plain, old, new),
        lambda: floor_sample(t.plain, old, new, syscall_stops=True),
    )
    floor = summarize(floors)
    result.add(Row(SECTION, f"{t.name}: floor, exec → first mark", scaled(floor, 1e3), "ms"))
    result.add(
        Row(
            SECTION,
            f"{t.name}: same, under PTRACE_SYSCALL",
            scaled(summarize(floors_sys), 1e3),
            "ms",
        )
    )
    rss = summarize([u.rss_mb for u in updates])
    result.add(
        Row(
            SECTION,
            f"{t.name}: tool peak RSS",
            rss,
            "MB",
            goal=f"≤ {RSS_GOAL_MB:g} MB",
            met=rss.median <= RSS_GOAL_MB,
        )
    )
    for i, role in enumerate(t.roles):
        reports: list[dict[str, Any]] = [u.reports[i] for u in updates]
        pauses = [r["pause"] for r in reports]
        label = f"{t.name}, {role}" if len(t.roles) > 1 else t.name
        pause = summarize(pauses)
        result.add(
            Row(
                SECTION,
                f"{label}: pause",
                scaled(pause, 1e3),
                "ms",
                goal=f"≤ {PAUSE_GOAL_MS:g} ms",
                met=pause.median * 1e3 <= PAUSE_GOAL_MS,
                p95=True,
            )
        )
        ratio = summarize(ratios(pauses, floors))
        result.add(
            Row(
                SECTION,
                f"{label}: pause/floor",
                ratio,
                goal=f"≤ {RATIO_GOAL:g}",
                met=ratio.median <= RATIO_GOAL,
                fmt=".1f",
            )
        )
        medians = {p: statistics.median(r["phases"][p] * 1e3 for r in reports) for p in PHASES}
        result.add(
            Row(
                SECTION,
                f"{label}: pause phases",
                text=", ".join(f"{p} {v:.1f}" for p, v in medians.items()) + " ms",
            )
        )
        other = {
            p: statistics.median(r["phases"][p] * 1e3 for r in reports) for p in ("plan", "wait")
        }
        phase_lines.append(
            f"| {label} | {pause.median * 1e3:.1f} | "
            + " | ".join(f"{medians[p]:.1f}" for p in PHASES)
            + f" | {floor.median * 1e3:.2f} | {other['plan']:.0f} | {other['wait']:.1f} |"
        )


def run(s: Settings) -> SectionResult:
    """Pause of counter, kvstore and ftpd updates, and the exec floor, interleaved."""
    result = SectionResult()
    phase_lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ekiden-bench-ftp-") as tmp:
        targets = [counter(), kvstore(s.little_keys)]
        reason = build.ftpd_unavailable()
        if reason is None:
            ftp.make_root(Path(tmp), 1 << 20)
            targets.append(ftpd(Path(tmp)))
        for target in targets:
            result.attempt(
                SECTION, target.name, lambda t=target: _measure(t, s, result, phase_lines)
            )
    if reason is not None:
        print(f"  ftpd skipped: {reason}")
        result.add(Row(SECTION, "ftpd listener and session pause", text=f"skipped: {reason}"))
    result.notes.append(_method(s, phase_lines))
    return result


def _method(s: Settings, phase_lines: list[str]) -> str:
    table = "\n".join(
        [
            "| update | pause | capture | exec | restore | floor | (plan) | (wait) |",
            "|---|---|---|---|---|---|---|---|",
            *phase_lines,
        ]
    )
    return (
        "**Update pause.** Each sample starts a fresh old-version server, gives it a little "
        "state and a connected client (counter: a client being served, so the update happens "
        f"in its client loop; kvstore: {s.little_keys} keys; ftpd: one logged-in session, "
        "updated with `--tree`, sessions first, then the listener), runs `ekiden-trace attach "
        "PID --new V2 --json` as a child process, checks that the client now sees v2 with its "
        "state, and takes `pause` from the report: from the old process stopped at its update "
        "point until the new version runs free. The tool's peak RSS is its own `ru_maxrss`: "
        "it is started by bench/rusage.py, a small fresh process, because a child forked "
        "from the bench process would count the bench's pages as its own.\n\n"
        "**Floor.** The same run interleaves (rotating order) two floor samples per update "
        "sample, each on a fresh old-version server, measured with the tool's own modules in "
        "the benchmark process as the tracer (bench/floor.py): the server is stopped "
        "at an update point exactly as `attach` does (untimed), then the clock runs from "
        "`exec_in_place` (execve injected through a `syscall` instruction of the marks) "
        "through finding the new image and arming its control block, until the new version "
        "reports its first mark (its first `EKIDEN_TAG`, where the tool would begin writing "
        "state). The floor lets start-up run freely (PTRACE_CONT); the second figure runs it "
        "with a stop at every system call (PTRACE_SYSCALL), as the tool's restore does to "
        "catch an exit during start-up. pause/floor is taken per round against the first.\n\n"
        "Where the pause goes (medians, ms; plan and wait come before the pause):\n\n" + table
    )
