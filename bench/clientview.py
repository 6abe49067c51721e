"""Section 2, seen by clients: request latency across an update vs a plain restart (kvstore)."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from dataclasses import dataclass

import build
import kv
from ab import interleaved
from procs import REPO, kill, run_measured, start_server, start_thread, tool_argv
from report import Row, SectionResult
from settings import Settings
from stats import scaled, summarize

SECTION = "2 clients"
SETTLE = 0.3  # seconds of requests before and after the event


class LoopClient:
    """One connection issuing GETs one at a time, timing each; reconnects when dropped."""

    def __init__(self, port: int, keys: int, seed: int) -> None:
        self.port = port
        self.keys = keys
        self.rnd = random.Random(seed)
        self.worst = 0.0
        self.requests = 0
        self.dropped = 0
        self.stopping = threading.Event()
        self.sock = self._connect()
        self.thread = start_thread(self._loop)

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + 30
        while True:
            try:
                return socket.create_connection(("127.0.0.1", self.port), timeout=30)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.001)

    def _ask(self, request: bytes) -> None:
        self.sock.sendall(request)
        got = b""
        while not got.endswith(b"\n"):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed by the server")
            got += chunk

    def _loop(self) -> None:
        while not self.stopping.is_set():
            request = b"GET %s\n" % kv.key(self.rnd.randrange(self.keys))
            started = time.perf_counter()
            while True:
                try:
                    self._ask(request)
                    break
                except OSError:  # reset, closed, refused: count it, reconnect, ask again
                    self.dropped += 1
                    self.sock.close()
                    self.sock = self._connect()
            self.worst = max(self.worst, time.perf_counter() - started)
            self.requests += 1

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)
        self.sock.close()


@dataclass
class Trial:
    """What the clients saw in one trial."""

    worst: float  # seconds, slowest request of any client
    dropped: int  # clients that lost their connection at least once
    losses: int  # connection losses in all (a reconnection can be lost again)
    lost: int  # keys gone afterwards
    pause: float  # the update's reported pause (0 for a restart)


def _trial(s: Settings, update: bool) -> Trial:
    v1, v2 = build.fixture("kvstore", "v1"), build.fixture("kvstore", "v2")
    pause = 0.0
    server = start_server(v1)
    try:
        kv.load(server.port, s.client_keys, 32)
        clients = [LoopClient(server.port, s.client_keys, i) for i in range(s.client_conns)]
        try:
            time.sleep(SETTLE)
            if update:
                xform = REPO / "fixtures" / "kvstore" / "xform_v1_v2.py"
                args = ["attach", str(server.pid), "--new", str(v2), "--xform", str(xform)]
                run = run_measured(tool_argv(*args, "--json"), 60)
                if run.returncode != 0:
                    raise RuntimeError(f"attach failed: {run.stderr.strip()[-300:]}")
                pause = json.loads(run.stdout)["pause"]
            else:
                kill(server.proc)
                server.stop()
                server = start_server(v2, port=server.port)
            time.sleep(SETTLE)
        finally:
            for client in clients:
                client.stop()
        lost = s.client_keys - kv.count(server.port)
    finally:
        server.stop()
    if min(c.requests for c in clients) == 0:
        raise RuntimeError("a client got no answer at all")
    return Trial(
        max(c.worst for c in clients),
        sum(c.dropped > 0 for c in clients),
        sum(c.dropped for c in clients),
        lost,
        pause,
    )


def run(s: Settings) -> SectionResult:
    """Worst client latency, dropped connections and lost keys: update vs restart."""
    result = SectionResult()
    updates, restarts = interleaved(
        s.client_trials, lambda: _trial(s, True), lambda: _trial(s, False)
    )
    n, keys = s.client_conns, s.client_keys
    for name, trials in (("update (attach)", updates), ("plain restart", restarts)):
        result.add(
            Row(
                SECTION,
                f"worst request latency, {name}",
                scaled(summarize([t.worst for t in trials]), 1e3),
                "ms",
            )
        )
        if trials is updates:
            result.add(
                Row(
                    SECTION,
                    "  the same updates' reported pause",
                    scaled(summarize([t.pause for t in trials]), 1e3),
                    "ms",
                )
            )
        worst = max(trials, key=lambda t: (t.dropped, t.losses, t.lost))
        result.add(
            Row(
                SECTION,
                f"{name}: connections lost, keys lost",
                text=f"{worst.dropped} of {n} connections ({worst.losses} losses in all), "
                f"{worst.lost:,} of {keys:,} keys (worst trial)",
            )
        )
    result.notes.append(
        f"**What a client sees.** kvstore v1 with {keys:,} keys and {n} client connections, "
        f"each issuing GETs one at a time in a loop (bench/clientview.py), timing every "
        f"request; a client that loses its connection counts it, reconnects (retrying every "
        f"1 ms) and asks again, and that request's time includes the reconnection. After "
        f"{SETTLE:g} s the server is either updated to v2 (`ekiden-trace attach`, with "
        f"xform_v1_v2.py) or restarted (SIGKILL, then kvstore v2 started on the same port, "
        f"timed until it listens); {SETTLE:g} s later the clients stop and COUNT tells how "
        f"many keys survived. Update and restart trials alternate. The update's worst request "
        f"includes the tool's wait for the update point as well as the pause."
    )
    return result
