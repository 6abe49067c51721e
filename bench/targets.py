"""The updates whose pause is measured: a fresh old-version server with a little state and
a connected client, the `attach` command for it, and a check that v2 then runs with it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import build
import ftp
import kv
from procs import REPO, BenchServer, run_measured, start_server, tool_argv

ATTACH_TIMEOUT = 60.0


@dataclass
class Live:
    """A started old-version server, the client holding its state, and what to check later."""

    server: BenchServer
    client: Any
    check: Callable[[], None]

    def stop(self) -> None:
        self.client.close()
        self.server.stop()


@dataclass
class Sample:
    """One update: a report per role, and the tool's own peak RSS (MB)."""

    reports: list[dict[str, Any]]
    rss_mb: float


@dataclass
class Target:
    """One kind of update: old -> new binaries of a fixture, and how to set one up."""

    name: str
    old: Path
    new: Path
    xform: Path | None
    tree: bool
    begin: Callable[[], Live]  # a fresh old-version server with its state
    plain: Callable[[], BenchServer]  # a fresh old-version server, no state (for the floor)
    roles: tuple[str, ...]  # the processes whose reports count, in report order

    def attach(self, live: Live) -> Sample:
        """Run `ekiden-trace attach --json` on it: one report per role, and the tool's RSS."""
        args = ["attach", str(live.server.pid), "--new", str(self.new), "--json"]
        if self.xform:
            args += ["--xform", str(self.xform)]
        if self.tree:
            args.append("--tree")
        run = run_measured(tool_argv(*args), ATTACH_TIMEOUT)
        if run.returncode != 0:
            raise RuntimeError(f"attach failed ({run.returncode}): {run.stderr.strip()[-300:]}")
        data = json.loads(run.stdout)
        if not self.tree:
            return Sample([data], run.maxrss_mb)
        reports = {p["pid"]: p["report"] for p in data["processes"]}
        listener = reports.pop(live.server.pid)
        # sessions first, as the tool updates them
        return Sample([*reports.values(), listener], run.maxrss_mb)

    def sample(self) -> Sample:
        """One update of a fresh server, checked."""
        live = self.begin()
        try:
            done = self.attach(live)
            live.check()
        finally:
            live.stop()
        if len(done.reports) != len(self.roles):
            raise RuntimeError(f"{self.name}: expected {len(self.roles)} reports")
        return done


def counter() -> Target:
    """counter v1 -> v2, a client connected and served (the update happens in cl_loop)."""
    from clients import CounterClient

    old, new = build.fixture("counter", "v1"), build.fixture("counter", "v2")

    def begin() -> Live:
        server = start_server(old)
        client = CounterClient(server.port)
        client.send("hello")

        def check() -> None:
            reply = client.send("after")
            if not reply.startswith("v2 "):
                raise RuntimeError(f"counter did not answer as v2: {reply!r}")

        return Live(server, client, check)

    plain = lambda: start_server(old)  # noqa: E731
    return Target("counter v1→v2", old, new, None, False, begin, plain, ("process",))


def kvstore(keys: int) -> Target:
    """kvstore v1 -> v2 (xform_v1_v2.py) with `keys` keys and one client connected."""
    from clients import KvClient

    old, new = build.fixture("kvstore", "v1"), build.fixture("kvstore", "v2")

    def begin() -> Live:
        server = start_server(old)
        kv.load(server.port, keys, 32)
        client = KvClient(server.port)

        def check() -> None:
            if client.hits(kv.key(0).decode()) is None or client.count() != keys:
                raise RuntimeError("kvstore lost its keys or does not speak v2")

        return Live(server, client, check)

    xform = REPO / "fixtures" / "kvstore" / "xform_v1_v2.py"
    name = f"kvstore v1→v2, {keys} keys"
    plain = lambda: start_server(old)  # noqa: E731
    return Target(name, old, new, xform, False, begin, plain, ("process",))


def ftpd(root: Path) -> Target:
    """ftpd v1 -> v2 with --tree: one logged-in session, then the listener."""
    old, new = build.fixture("ftpd", "v1"), build.fixture("ftpd", "v2")

    def begin() -> Live:
        server = ftp.start(old, root)
        client = ftp.Control(server.port)
        client.login()

        def check() -> None:
            if not client.command("FEAT").startswith("211"):
                raise RuntimeError("the ftpd session does not speak v2 (FEAT)")
            fresh = ftp.Control(server.port)
            fresh.close()
            if "v2" not in fresh.greeting:
                raise RuntimeError(f"the ftpd listener is not v2: {fresh.greeting!r}")

        return Live(server, client, check)

    plain = lambda: ftp.start(old, root)  # noqa: E731
    roles = ("session", "listener")
    return Target("ftpd v1→v2 (--tree)", old, new, None, True, begin, plain, roles)
