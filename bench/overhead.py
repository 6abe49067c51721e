"""Section 1: what the marks cost when no tool is attached (marked vs -DEKIDEN_DISABLE builds)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path

import build
import ftp
import kv
from ab import interleaved, ratios
from loadgen import LoadGenerator, LoadResult, cpu_seconds, pipeline_worker, split
from procs import BenchServer, start_server
from report import Row, SectionResult
from settings import Settings
from stats import summarize

SECTION = "1 overhead"
GOAL = 0.99
WARMUP = 0.1  # seconds of load before each window


def _ratio_rows(
    result: SectionResult, what: str, unit: str, a: list[float], b: list[float]
) -> None:
    result.add(Row(SECTION, f"{what}, marked", summarize(a), unit))
    result.add(Row(SECTION, f"{what}, unmarked", summarize(b), unit))
    ratio = summarize(ratios(a, b))
    result.add(
        Row(
            SECTION,
            f"{what}: marked/unmarked",
            ratio,
            goal=f"≥ {GOAL}",
            met=ratio.median >= GOAL,
            fmt=".3f",
        )
    )


def _alternate(
    s: Settings,
    worker: Callable[..., None],
    args: list[list[tuple]],
    server_cpu: list[Callable[[], float]],
    seconds: float,
) -> list[list[LoadResult]]:
    """Samples of the marked (0) and unmarked (1) server, ABBA, one generator each."""
    with contextlib.ExitStack() as stack:
        gens = [stack.enter_context(LoadGenerator(worker, a)) for a in args]
        return interleaved(
            s.overhead_pairs,
            lambda: gens[0].measure(server_cpu[0], seconds, WARMUP),
            lambda: gens[1].measure(server_cpu[1], seconds, WARMUP),
        )


def _bottleneck(server: list[float], client: list[float], server_name: str) -> str:
    """Which side limits the rate, judged from the cores each kept busy (medians)."""
    s, c = summarize(server).median, summarize(client).median
    busy = f"({server_name} {s:.2f} core busy, client {c:.2f})"
    if s + c >= 1.8:
        return f"the machine: both cores busy {busy}"
    if s >= 0.9:
        return f"{server_name}-bound {busy}"
    if c >= 0.9:
        return f"client-bound {busy}"
    return f"latency-bound: neither side saturated {busy}"


def _kvstore(s: Settings, result: SectionResult) -> None:
    binaries = [build.fixture("kvstore", v) for v in ("v1", "v1-unmarked")]
    batch = kv.request_batch(s.kv_keys, s.kv_batch, 32)
    servers: list[BenchServer] = []
    try:
        for binary in binaries:
            servers.append(start_server(binary))
            kv.load(servers[-1].port, s.kv_keys, 32)

        marked, unmarked = _alternate(
            s,
            pipeline_worker,
            [
                [(sv.port, n, batch, s.kv_batch) for n in split(s.kv_conns, s.kv_procs)]
                for sv in servers
            ],
            [lambda sv=sv: cpu_seconds(sv.pid) for sv in servers],
            s.kv_seconds,
        )
    finally:
        for server in servers:
            server.stop()
    _ratio_rows(
        result, "kvstore requests/s", "req/s", [r.rate for r in marked], [r.rate for r in unmarked]
    )
    every = marked + unmarked
    result.add(
        Row(
            SECTION,
            "kvstore bottleneck",
            text=_bottleneck(
                [r.server_cpu for r in every], [r.generator_cpu for r in every], "server"
            ),
        )
    )
    result.notes.append(
        f"**Overhead, kvstore.** fixtures/kvstore/v1 built twice from the same source, with "
        f"the marks and with `-DEKIDEN_DISABLE` (`make fixtures/kvstore/v1-unmarked`). Both "
        f"servers run side by side, each preloaded with {s.kv_keys:,} keys (32-byte values). "
        f"The load generator (bench/loadgen.py) uses {s.kv_procs} process(es) and "
        f"{s.kv_conns} raw non-blocking sockets, each keeping 2 batches of {s.kv_batch:,} "
        f"pipelined requests in flight (90% GET, 10% SET of random keys) and counting reply "
        f"newlines only; more generator processes did not raise the rate. Each sample is "
        f"{s.kv_seconds:g} s after {WARMUP:g} s of warm-up; marked and unmarked samples alternate "
        f"(ABBA), and the ratio is taken per pair. The bottleneck is judged from CPU time in "
        f"/proc/PID/stat over each window: the server's (user+system) and the generator's."
    )


def _ftpd(s: Settings, result: SectionResult) -> None:
    reason = build.ftpd_unavailable()
    if reason:
        result.add(Row(SECTION, "ftpd session and RETR throughput", text=f"skipped: {reason}"))
        print(f"  ftpd skipped: {reason}")
        return
    with tempfile.TemporaryDirectory(prefix="ekiden-bench-ftp-") as tmp:
        root = Path(tmp)
        ftp.make_root(root, s.retr_bytes)
        servers: list[BenchServer] = []
        try:
            for version in ("v1", "v1-unmarked"):
                servers.append(ftp.start(build.fixture("ftpd", version), root))
            result.attempt(SECTION, "ftpd sessions/s", lambda: _ftpd_sessions(s, result, servers))
            result.attempt(SECTION, "ftpd RETR bandwidth", lambda: _ftpd_retr(s, result, servers))
        finally:
            for server in servers:
                server.stop()


def _ftpd_sessions(s: Settings, result: SectionResult, servers: list[BenchServer]) -> None:
    marked, unmarked = _alternate(
        s,
        ftp.session_worker,
        [[(sv.port, n) for n in split(s.ftp_concurrent, s.ftp_procs)] for sv in servers],
        [lambda sv=sv: cpu_seconds(sv.pid, children=True) for sv in servers],
        s.ftp_seconds,
    )
    commands = len(ftp.SESSION)
    _ratio_rows(
        result,
        f"ftpd sessions/s ({commands} commands each, login included)",
        "/s",
        [r.rate for r in marked],
        [r.rate for r in unmarked],
    )
    result.add(
        Row(
            SECTION,
            "ftpd commands/s, marked",
            summarize([r.rate * commands for r in marked]),
            "/s",
        )
    )
    # The rate is latency-bound and noisy; work per unit of ftpd's own CPU is steadier.
    efficiency = [[r.rate / r.server_cpu for r in side] for side in (marked, unmarked)]
    result.add(
        Row(
            SECTION,
            "ftpd sessions per CPU-second of ftpd: marked/unmarked",
            summarize(ratios(*efficiency)),
            fmt=".3f",
        )
    )
    every = marked + unmarked
    result.add(
        Row(
            SECTION,
            "ftpd sessions bottleneck",
            text=_bottleneck(
                [r.server_cpu for r in every], [r.generator_cpu for r in every], "ftpd"
            ),
        )
    )
    result.notes.append(
        f"**Overhead, ftpd sessions.** fixtures/ftpd/v1 and its `-unmarked` build run side by "
        f"side (no per-address limit). A generator process keeps {s.ftp_concurrent} sessions "
        f"open at once; each session connects, sends its {commands} commands "
        f"({', '.join(ftp.SESSION)}) in one write (the server reads commands from a buffer) "
        f"and reads until the server closes after `221`. Samples of {s.ftp_seconds:g} s "
        f"alternate ABBA. ftpd's CPU is the listener's plus that of its reaped sessions "
        f"(cutime/cstime). Every session is a fork, so this measures fork+login+commands. "
        f"Neither side saturates a core, so the rate varies with scheduling; sessions per "
        f"CPU-second of ftpd, taken from the same windows, is the steadier figure of the "
        f"marks' cost."
    )


def _ftpd_retr(s: Settings, result: SectionResult, servers: list[BenchServer]) -> None:
    buf = bytearray(1 << 20)
    server_cpu: list[float] = []
    client_cpu: list[float] = []

    def sample(server: BenchServer) -> float:
        ctl, session = ftp.login(server.port, server.pid)
        try:
            before = cpu_seconds(session)
            total, seconds, cpu = 0, 0.0, 0.0
            for _ in range(s.retr_per_sample):
                n, t, c = ftp.retr(ctl, "/big.bin", buf)
                total, seconds, cpu = total + n, seconds + t, cpu + c
            server_cpu.append((cpu_seconds(session) - before) / seconds)
            client_cpu.append(cpu / seconds)
            ctl.command("QUIT")
        finally:
            ctl.close()
        return total / seconds / 1e6

    marked, unmarked = interleaved(
        s.overhead_pairs, lambda: sample(servers[0]), lambda: sample(servers[1])
    )
    _ratio_rows(result, "ftpd RETR bandwidth", "MB/s", marked, unmarked)
    result.add(
        Row(
            SECTION,
            "ftpd RETR bottleneck",
            text=_bottleneck(server_cpu, client_cpu, "session"),
        )
    )
    result.notes.append(
        f"**Overhead, ftpd RETR.** One logged-in session per sample fetches a "
        f"{s.retr_bytes >> 20} MiB file {s.retr_per_sample} time(s) in binary mode over PASV; "
        f"the client reads the data connection with `recv_into` a 1 MiB buffer. Bandwidth is "
        f"bytes over the time from sending RETR to the data connection's end. The session's "
        f"CPU comes from its /proc/PID/stat, the client's from its thread CPU time."
    )


def run(s: Settings) -> SectionResult:
    """Marked/unmarked throughput of kvstore and ftpd."""
    result = SectionResult()
    result.attempt(SECTION, "kvstore requests/s", lambda: _kvstore(s, result))
    result.attempt(SECTION, "ftpd throughput", lambda: _ftpd(s, result))
    return result
