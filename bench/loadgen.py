"""Load generator processes, and measuring a server under their load.

`LoadGenerator` runs one worker function in several processes; each worker
adds what it completed (replies, sessions) to its slot of a shared counter
array, and `measure` turns counter deltas over a window into a rate, next to
the CPU the server and the workers used in that window.  `pipeline_worker`
drives a line protocol: raw non-blocking sockets from one selector loop, each
keeping DEPTH large batches of requests in flight, counting reply newlines only,
so the generator spends little CPU per request.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEPTH = 2  # batches in flight per socket
RUN, PAUSE, STOP = 0, 1, 2  # the generator's state, in its last flag
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """CPU time (user + system) a process has used, plus that of its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


@dataclass(frozen=True)
class LoadResult:
    """One measured window."""

    rate: float  # completed units (replies, sessions) per second
    server_cpu: float  # server CPU seconds per wall second (1.0 = one core busy)
    generator_cpu: float  # the same, summed over the generator's workers


class Shared:
    """What a worker shares with the parent: its counter slot and the flags."""

    def __init__(self, counts: Any, flags: Any, slot: int) -> None:
        self.counts = counts
        self.flags = flags
        self.slot = slot

    def ready(self) -> None:
        self.flags[self.slot] = 1

    def stopping(self) -> bool:
        return self.flags[-1] == STOP

    def running(self) -> bool:
        return self.flags[-1] == RUN

    def done(self, total: int) -> None:
        self.counts[self.slot] = total


class LoadGenerator:
    """`worker(shared, *args)` in one process per args tuple; a context manager."""

    def __init__(self, worker: Callable[..., None], args: Sequence[tuple]) -> None:
        ctx = mp.get_context("fork")
        self.counts = ctx.RawArray("q", len(args))
        self.flags = ctx.RawArray("b", len(args) + 1)  # "ready" per worker, then the state
        self.flags[-1] = PAUSE
        self.workers = [
            ctx.Process(target=worker, args=(Shared(self.counts, self.flags, i), *a), daemon=True)
            for i, a in enumerate(args)
        ]

    def __enter__(self) -> LoadGenerator:
        for w in self.workers:
            w.start()
        deadline = time.monotonic() + 10
        while not all(self.flags[: len(self.workers)]):
            if time.monotonic() > deadline or any(w.exitcode is not None for w in self.workers):
                self.__exit__()
                raise RuntimeError("the load generator could not connect")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.flags[-1] = STOP
        for w in self.workers:
            w.join(2)
            if w.is_alive():
                w.kill()
                w.join()

    def pause(self) -> None:
        """Let the workers finish what is in flight and start nothing new."""
        self.flags[-1] = PAUSE

    def measure(
        self, server_cpu: Callable[[], float], seconds: float, warmup: float = 0.3
    ) -> LoadResult:
        """Run for `warmup`, then units per second over `seconds`, with the CPU both sides
        used; the workers are paused again afterwards."""
        self.flags[-1] = RUN
        time.sleep(warmup)
        pids = [w.pid for w in self.workers if w.pid is not None]
        c0, s0, g0, t0 = sum(self.counts), server_cpu(), _cpu(pids), time.monotonic()
        time.sleep(seconds)
        c1, s1, g1, t1 = sum(self.counts), server_cpu(), _cpu(pids), time.monotonic()
        self.pause()
        if any(w.exitcode not in (None, 0) for w in self.workers):
            raise RuntimeError("a load generator worker failed")
        wall = t1 - t0
        return LoadResult((c1 - c0) / wall, (s1 - s0) / wall, (g1 - g0) / wall)


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def split(total: int, parts: int) -> list[int]:
    """total as `parts` near-equal whole numbers."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def pipeline_worker(shared: Shared, port: int, nconn: int, batch: bytes, per_batch: int) -> None:
    """Keep DEPTH batches (per_batch request lines each) in flight on nconn sockets while
    the generator runs; when it is paused, only collect the replies still owed."""
    sel = selectors.DefaultSelector()
    pending: dict[int, memoryview] = {}
    owed: dict[int, int] = {}
    socks: dict[int, socket.socket] = {}
    both = selectors.EVENT_READ | selectors.EVENT_WRITE
    for _ in range(nconn):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        socks[s.fileno()] = s
        pending[s.fileno()] = memoryview(b"")
        owed[s.fileno()] = 0
        sel.register(s, selectors.EVENT_READ)
    shared.ready()
    total = 0
    while not shared.stopping():
        running = shared.running()
        for fd, s in socks.items():
            refill = 0
            while running and owed[fd] <= per_batch * (DEPTH - 1):
                owed[fd] += per_batch
                refill += 1
            if refill:
                pending[fd] = memoryview(bytes(pending[fd]) + batch * refill)
                sel.modify(s, both)
        for key, events in sel.select(0.05 if running else 0.005):
            s, fd = socks[key.fd], key.fd
            if events & selectors.EVENT_READ:
                data = s.recv(1 << 20)
                if not data:
                    raise ConnectionError("the server closed a connection")
                got = data.count(b"\n")
                total += got
                owed[fd] -= got
                shared.done(total)
            if events & selectors.EVENT_WRITE and len(pending[fd]):
                sent = s.send(pending[fd])
                pending[fd] = pending[fd][sent:]
                if not len(pending[fd]):
                    sel.modify(s, selectors.EVENT_READ)
    for s in socks.values():
        s.close()
    sel.close()
