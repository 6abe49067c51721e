#!/usr/bin/env python3
"""The guardian's window: how long after the tool's death its guardian holds the process.

Kills the tool (EKIDEN_TRACE_KILL_AT=restore, a test hook) while it updates kvstore
v1 -> v2, and measures from the tool's exit to the moment the guardian traces the
process (TracerPid), then to the end of the rollback.  In between, the new version runs
untraced: the start-up code up to its next mark, where it waits (it is guarded).

    cd tests && ../.venv/bin/python ../bench/guardian_window.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from clients import KvClient, fixture_binary, start_server  # noqa: E402
from conftest import process_state, tracer_of  # noqa: E402


def one_run() -> tuple[float, float]:
    """Seconds from the tool's exit to the guardian's seize, and to the process settled."""
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.pipeline([f"SET k{i} v{i}" for i in range(300)])
        new = str(fixture_binary("kvstore", "v2"))
        xform = str(REPO / "fixtures/kvstore/xform_v1_v2.py")
        tool = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ekiden_trace",
                "attach",
                str(server.pid),
                "--new",
                new,
                "--xform",
                xform,
            ],
            cwd=REPO,
            env={**os.environ, "EKIDEN_TRACE_KILL_AT": "restore"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        tool.wait()
        died = time.monotonic()
        while tracer_of(server.pid) == 0:
            time.sleep(0.0002)
        seized = time.monotonic()
        while tracer_of(server.pid) != 0 or process_state(server.pid) not in "SR":
            time.sleep(0.001)
        settled = time.monotonic()
        assert client.stats()["version"] == 1 and client.count() == 300
        return seized - died, settled - died


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    runs = [one_run() for _ in range(parser.parse_args().runs)]
    for name, values in (("seize", [r[0] for r in runs]), ("rolled back", [r[1] for r in runs])):
        ms = sorted(v * 1000 for v in values)
        print(
            f"{name}: median {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms ({len(ms)} runs)"
        )


if __name__ == "__main__":
    main()
