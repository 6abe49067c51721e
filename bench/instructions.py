"""Section 5: what the marks cost in instructions, counted by valgrind (callgrind).

Wall-clock ratios on a shared machine move by several per cent from run to run; the
number of instructions a server executes for the same work does not.  Each fixture,
marked and unmarked, runs under `valgrind --tool=callgrind` twice: once with no work
(start-up and exit) and once with N units of work; (I(N) - I(0)) / N is its cost per
unit.  Forked processes are counted too: callgrind dumps and zeroes its counters
before every fork, so a child starts from zero and each instruction is counted once.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import build
import ftp
import kv
from ab import ratios
from procs import start_server
from report import Row, SectionResult
from settings import Settings
from stats import summarize

SECTION = "5 instructions"
GOAL = 1.01  # marked/unmarked instructions per unit of work


@dataclass
class Case:
    """A fixture, the unit of work counted, and how to give it n units."""

    name: str
    unit: str
    args: tuple[str, ...]  # after the port
    work: Callable[[int, int], None]  # (port, n)
    units: int


def _counter_work(port: int, n: int) -> None:
    from clients import CounterClient

    with CounterClient(port, timeout=120) as client:
        client.pipeline([f"line {i}" for i in range(n)])


def _kvstore_work(port: int, n: int) -> None:
    from clients import KvClient

    if n == 0:
        return
    kv.load(port, 1000, 32)
    with KvClient(port, timeout=120) as client:
        batch = kv.request_batch(1000, n, 32).decode().splitlines()
        client.pipeline(batch)


def _ftpd_work(port: int, n: int) -> None:
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
            sock.sendall(ftp.SESSION_BYTES)
            while sock.recv(65536):
                pass


def _children(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def _faults(pid: int) -> int:
    """Minor page faults of a process and of its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7]) + int(fields[8])


def _wait_children(pid: int) -> None:
    deadline = time.monotonic() + 60
    while _children(pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # sessions still exiting


def _faults_per_unit(binary: Path, case: Case) -> float:
    """Minor page faults per unit of work, natively (no valgrind)."""
    server = start_server(binary, *case.args)
    try:
        case.work(server.port, 1)  # warm: the first unit touches pages once for all
        _wait_children(server.pid)
        before = _faults(server.pid)
        case.work(server.port, case.units)
        _wait_children(server.pid)
        return (_faults(server.pid) - before) / case.units
    finally:
        server.stop()


def _count(binary: Path, case: Case, n: int) -> int:
    """Instructions `binary` executes (its forks included) from start to exit with n units."""
    with tempfile.TemporaryDirectory(prefix="ekiden-bench-cg-") as tmp:
        prefix = (
            "valgrind",
            "--tool=callgrind",
            "--dump-before=fork",
            "--dump-before=_Fork",
            f"--callgrind-out-file={tmp}/cg.%p",
        )
        server = start_server(binary, *case.args, prefix=prefix, timeout=60)
        try:
            case.work(server.port, n)
            _wait_children(server.pid)  # their counts are written as they exit
            os.kill(server.pid, signal.SIGTERM)  # callgrind writes the counts as it dies
            server.proc.wait(60)
        finally:
            server.stop()
        total = 0
        for dump in Path(tmp).glob("cg.*"):
            for line in dump.read_text().splitlines():
                if line.startswith("summary:"):
                    total += int(line.split()[1])
        return total


def _per_unit(binary: Path, case: Case) -> float:
    return (_count(binary, case, case.units) - _count(binary, case, 0)) / case.units


def _cases(s: Settings, root: Path) -> list[Case]:
    cases = [
        Case("counter", "line", (), _counter_work, s.instr_units[0]),
        Case("kvstore", "request", (), _kvstore_work, s.instr_units[1]),
    ]
    if build.ftpd_unavailable() is None:
        args = (str(root), "-", str(ftp.MAX_PER_IP))
        cases.append(Case("ftpd", "session", args, _ftpd_work, s.instr_units[2]))
    return cases


def run(s: Settings) -> SectionResult:
    """Instructions per unit of work, marked and unmarked, for every fixture."""
    result = SectionResult()
    if shutil.which("valgrind") is None:
        result.add(Row(SECTION, "instructions", text="skipped: valgrind is not installed"))
        return result
    with tempfile.TemporaryDirectory(prefix="ekiden-bench-ftp-") as tmp:
        ftp.make_root(Path(tmp), 1 << 20)
        for case in _cases(s, Path(tmp)):
            result.attempt(SECTION, case.name, lambda c=case: _measure(c, s, result))
    result.notes.append(_method(s))
    return result


def _measure(case: Case, s: Settings, result: SectionResult) -> None:
    print(f"  {case.name}", flush=True)
    binaries = [build.fixture(case.name, v) for v in ("v1", "v1-unmarked")]
    marked, unmarked, faults = [], [], []
    for i in range(s.instr_repeats):  # AB BA ...
        order = binaries if i % 2 == 0 else binaries[::-1]
        counts = {b: _per_unit(b, case) for b in order}
        marked.append(counts[binaries[0]])
        unmarked.append(counts[binaries[1]])
        faults.append([_faults_per_unit(b, case) for b in binaries])
    what = f"{case.name}: instructions per {case.unit}"
    result.add(Row(SECTION, f"{what}, marked", summarize(marked), fmt=",.0f"))
    result.add(Row(SECTION, f"{what}, unmarked", summarize(unmarked), fmt=",.0f"))
    ratio = summarize(ratios(marked, unmarked))
    result.add(
        Row(
            SECTION,
            f"{what}: marked/unmarked",
            ratio,
            goal=f"≤ {GOAL}",
            met=ratio.median <= GOAL,
            fmt=".4f",
        )
    )
    marked_faults, unmarked_faults = (summarize([f[k] for f in faults]) for k in (0, 1))
    result.add(
        Row(
            SECTION,
            f"{case.name}: minor page faults per {case.unit}, marked | unmarked",
            text=f"{marked_faults.median:.2f} | {unmarked_faults.median:.2f}",
        )
    )


def _method(s: Settings) -> str:
    return (
        "**Instructions.** Each fixture's v1, built with its marks and with "
        "`-DEKIDEN_DISABLE`, runs under `valgrind --tool=callgrind "
        "--dump-before=fork --dump-before=_Fork`, which dumps and zeroes the counters "
        "before every fork, so the instructions of forked sessions are counted once, in "
        "the child. A run is started, given N units of work, left until its children "
        "have exited, and ended with SIGTERM (callgrind writes its counts as the process "
        "dies); the instructions of every process are summed. Each build runs twice, with "
        "no work and with N units, and (I(N) - I(0)) / N is the cost per unit: start-up "
        "and exit cancel out. counter: N lines from one client, pipelined; kvstore: "
        "1,000 keys loaded, then N requests (90% GET, 10% SET), pipelined; ftpd: N "
        "sessions one after the other, each the session of the throughput benchmark "
        f"(N = {', '.join(f'{u:,}' for u in s.instr_units)}). Marked and unmarked runs "
        f"alternate (AB BA), {s.instr_repeats} of each. Counts of user-space instructions "
        "do not depend on the machine's load, so these ratios hold where wall-clock "
        "ratios on a shared machine do not; they leave out the kernel's work (system "
        "calls, page faults, fork). Minor page faults per unit come from native runs "
        "(no valgrind) of the same work: the server's and its reaped children's "
        "`minflt` in /proc/PID/stat, after one unit of warm-up."
    )
