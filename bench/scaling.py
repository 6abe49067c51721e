"""Section 3: how the pause, the transfer rate and the tool's memory grow with kvstore's state."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import build
import kv
from clients import LineClient
from procs import REPO, run_measured, start_server, tool_argv
from report import Row, SectionResult
from settings import Settings
from stats import summarize
from vmread import VmReader

SECTION = "3 scaling"
REAL_MAX = 100_000  # up to here the fixture itself (64 buckets); above, a wide-bucket build
# The pause's goal (seconds) by size; the RSS goal holds at 1,000,000.
KV_PAUSE_GOALS = {100_000: 0.3, 1_000_000: 2.0}
LIST_PAUSE_GOALS = {1_000_000: 2.0}
RSS_GOAL_MB = 1024.0
XFORM = REPO / "fixtures" / "kvstore" / "xform_v1_v2.py"
REPEAT_BUDGET = 150.0  # seconds: a size whose runs would take longer is measured once


@dataclass
class Workload:
    """What is updated at one size: the binaries, how to give the server its state, and how
    to check the updated server still has all of it."""

    name: str
    binaries: list[Path]
    xform: Path | None
    load: Callable[[int, int], None]  # (port, n)
    holds: Callable[[int, int], bool]  # (port, n): the updated server has all n
    pause_goals: dict[int, float]  # seconds, by size


def _kvstore(s: Settings, binaries: list[Path], name: str) -> Workload:
    return Workload(
        name,
        binaries,
        XFORM,
        lambda port, n: kv.load(port, n, s.value_len),
        lambda port, n: kv.count(port) == n,
        KV_PAUSE_GOALS,
    )


def _list_send(port: int, line: str) -> str:
    with LineClient(port, timeout=600) as client:
        return client.command(line)


def _list_holds(port: int, n: int) -> bool:
    checksum = sum(i * 31 + len(f"item-{i}") for i in range(n))
    return _list_send(port, "CHECK") == f"LIST {n} {checksum} v2"


def _biglist(binaries: list[Path], name: str) -> Workload:
    return Workload(
        name,
        binaries,
        None,
        lambda port, n: _list_send(port, f"FILL {n}"),
        _list_holds,
        LIST_PAUSE_GOALS,
    )


@dataclass
class Run:
    """One update of a loaded server."""

    report: dict[str, Any]
    rss_mb: float
    load_seconds: float
    vm_bandwidth: float  # process_vm_readv bytes/s, measured just before

    @property
    def moving(self) -> float:
        """Seconds spent moving state: capture + restore."""
        return self.report["phases"]["capture"] + self.report["phases"]["restore"]


@dataclass
class Failure:
    """Why a run gave no report, and the tool's peak RSS when it was killed, if it was."""

    text: str
    rss_mb: float | None = None


def _one(w: Workload, n: int, s: Settings, vm: VmReader) -> Run | Failure:
    """A Run, or why there is none."""
    bandwidth = vm.bandwidth()
    server = start_server(w.binaries[0])
    try:
        started = time.monotonic()
        w.load(server.port, n)
        load_seconds = time.monotonic() - started
        args = ["attach", str(server.pid), "--new", str(w.binaries[1])]
        if w.xform:
            args += ["--xform", str(w.xform)]
        args += ["--json", "--timeout", str(s.scale_timeout)]
        run = run_measured(tool_argv(*args), s.scale_timeout)
        if run.timed_out:
            return Failure(f"did not finish in {s.scale_timeout:g} s", run.maxrss_mb)
        if run.returncode != 0:
            return Failure(f"failed ({run.returncode}): {run.stderr.strip()[-200:]}")
        if not w.holds(server.port, n):
            return Failure("the updated server lost state")
        return Run(json.loads(run.stdout), run.maxrss_mb, load_seconds, bandwidth)
    finally:
        server.stop()


def _rows(
    result: SectionResult, n: int, w: Workload, runs: list[Run], failure: Failure | None
) -> None:
    name = w.name
    pause_goal = w.pause_goals.get(n)
    goal_pause = f"≤ {pause_goal:g} s" if pause_goal else ""
    goal_rss = f"< {RSS_GOAL_MB:,.0f} MB" if n >= 1_000_000 else ""
    if not runs:
        text = failure.text if failure else "not run"
        result.add(Row(SECTION, f"{name}: pause", text=text, goal=goal_pause, met=False))
        if failure and failure.rss_mb is not None:
            rss = failure.rss_mb
            result.add(
                Row(
                    SECTION,
                    f"{name}: tool peak RSS",
                    text=f"{rss:,.0f} MB when killed",
                    goal=goal_rss,
                    met=False if rss >= RSS_GOAL_MB else None,  # below: it might have grown
                )
            )
        return
    pause = summarize([r.report["pause"] for r in runs])
    rss = summarize([r.rss_mb for r in runs])
    result.add(
        Row(
            SECTION,
            f"{name}: pause",
            pause,
            "s",
            goal_pause,
            pause.median <= (pause_goal or 0),
            p95=True,
        )
    )
    objects = summarize([r.report["objects"] / r.moving for r in runs])
    result.add(Row(SECTION, f"{name}: objects/s", objects))
    rates = [r.report["bytes"] / r.moving for r in runs]
    result.add(Row(SECTION, f"{name}: MB/s moved", summarize([b / 1e6 for b in rates]), "MB/s"))
    result.add(
        Row(
            SECTION,
            f"{name}: MB/s as % of process_vm_readv",
            summarize([100 * b / r.vm_bandwidth for b, r in zip(rates, runs, strict=True)]),
            "%",
            fmt=".2g",
        )
    )
    result.add(
        Row(SECTION, f"{name}: tool peak RSS", rss, "MB", goal_rss, rss.median < RSS_GOAL_MB)
    )
    phases = {
        p: statistics.median(r.report["phases"][p] for r in runs)
        for p in ("capture", "exec", "restore")
    }
    first = runs[0].report
    result.add(
        Row(
            SECTION,
            f"{name}: where the pause goes",
            text=", ".join(f"{p} {v:.2f} s" for p, v in phases.items())
            + f"; {first['objects']:,} objects, {first['bytes'] / 1e6:.1f} MB"
            + f"; loaded in {statistics.median(r.load_seconds for r in runs):.1f} s",
        )
    )
    if failure:
        result.add(Row(SECTION, f"{name}: a later run", text=failure.text))


def _size(
    s: Settings, result: SectionResult, n: int, repeats: int, w: Workload, vm: VmReader
) -> list[Run]:
    """Up to `repeats` runs at one size, their rows added; the runs."""
    print(f"  {w.name}", flush=True)
    runs: list[Run] = []
    failure = None
    for i in range(repeats):
        started = time.monotonic()
        outcome = _one(w, n, s, vm)
        if isinstance(outcome, Failure):
            failure = outcome
            break
        runs.append(outcome)
        if i == 0 and (time.monotonic() - started) * (repeats - 1) > REPEAT_BUDGET:
            break  # too slow to repeat within the suite's time
    _rows(result, n, w, runs, failure)
    return runs


def run(s: Settings) -> SectionResult:
    """kvstore v1 -> v2 at each size in s.scale_sizes, then one list at each of s.list_sizes."""
    result = SectionResult()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="ekiden-bench-kv-") as tmp, VmReader(s.vm_bytes) as vm:
        real = [build.fixture("kvstore", v) for v in ("v1", "v2")]
        for keys, repeats in zip(s.scale_sizes, s.scale_repeats, strict=True):

            def measure(keys: int = keys, repeats: int = repeats) -> None:
                binaries, name = real, f"{keys:,} keys"
                if keys > REAL_MAX:
                    wide = 1 << max(6, (keys // 4 - 1).bit_length())
                    binaries = build.kvstore_buckets(Path(tmp), wide, ("v1", "v2"))
                    name += f" ({wide:,} buckets)"
                runs.extend(_size(s, result, keys, repeats, _kvstore(s, binaries, name), vm))

            result.attempt(SECTION, f"{keys:,} keys", measure)
        lists = build.biglist(Path(tmp))
        for nodes, repeats in zip(s.list_sizes, s.list_repeats, strict=True):
            w = _biglist(lists, f"one list of {nodes:,} nodes")
            result.attempt(
                SECTION,
                w.name,
                lambda n=nodes, r=repeats, w=w: runs.extend(_size(s, result, n, r, w, vm)),
            )
    if runs:
        vm_gb = summarize([r.vm_bandwidth / 1e9 for r in runs])
        result.add(Row(SECTION, "process_vm_readv bandwidth (same run)", vm_gb, "GB/s"))
    result.notes.append(_method(s))
    return result


def _method(s: Settings) -> str:
    return (
        f"**Scaling with state.** kvstore v1 → v2 (xform_v1_v2.py) after loading N keys with "
        f"{s.value_len}-byte values through one connection in pipelined batches of "
        f"{kv.LOAD_BATCH:,} SETs. Each entry is 3 heap objects (entry, key, value). Up to "
        f"{REAL_MAX:,} keys the fixture itself is used; its 64 buckets make loading O(N²) "
        f"(100,000 keys take about 5 s, so 1,000,000 would take about 100 times longer), so "
        f"larger sizes use kvstore v1/v2 compiled from the same sources with NBUCKETS raised "
        f"to the next power of two ≥ N/4 (same flags; bench/build.py), which changes "
        f"only the length of the bucket array and of the chains. The tool runs as a child "
        f"(`attach --json --timeout {s.scale_timeout:g}`), killed after "
        f"{s.scale_timeout:g} s; its peak RSS is its own `ru_maxrss`, taken by "
        f"bench/rusage.py (a small fresh process that starts it). "
        f"objects/s and MB/s use the report's objects and bytes over its capture + restore "
        f"phases. Before every run, the same process reads a {s.vm_bytes >> 20} MiB buffer "
        f"held by a child with one `process_vm_readv` call (best of three), the machine's "
        f"memory-copy ceiling for a tracer; the ratio is taken per run. A size whose first "
        f"run shows its repeats would exceed {REPEAT_BUDGET:g} s is measured once; then n=1 "
        f"and there is no spread.\n\n"
        f"**One list.** bench/biglist.c (built by bench/build.py with the fixtures' flags, "
        f"as version 1 and, with a field added in the middle of the node, version 2) holds "
        f"one singly linked list, the tagged global `head`; `FILL N` prepends N nodes, each "
        f"with a strdup'd name, so N nodes are 2N heap objects in a chain N deep. After the "
        f"update, `CHECK` walks the list in v2 and must return its length and a checksum "
        f"over every id and name."
    )
