"""The capture alone, compiled vs reference, on a loaded kvstore v1 or biglist v1.

    python bench/capture_engine.py kv|list N ENGINE...

Builds the server (kvstore with 262,144 buckets above 100,000 keys, as bench/scaling.py
does), loads N keys or nodes, then for each ENGINE (compiled or python) runs a fresh
tool process that stops the server at its update point, captures its state and
leaves it running; that process prints one JSON line: the engine that ran, the
objects, the capture's seconds and its own peak RSS (the tool alone).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "tests")]

import build  # noqa: E402
import kv  # noqa: E402
from clients import LineClient, start_server  # noqa: E402

VALUE_LEN = 100


def measure(pid: int) -> None:
    """In the tool process: stop `pid`, capture, print the figures."""
    from ekiden_trace.ops.inspect import InspectOptions, stop_of, stopped
    from ekiden_trace.state.capture import Capturer

    with stopped(pid, InspectOptions(timeout=60)) as (live, tracee, point):
        stop, frames = stop_of(live, tracee, point, False)
        started = time.perf_counter()
        snapshot = Capturer(live).capture(stop, frames)
        seconds = time.perf_counter() - started
    figures = {
        "engine": snapshot.engine,
        "objects": len(snapshot.objects),
        "capture s": round(seconds, 3),
        "tool peak RSS MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(figures), flush=True)


def main() -> None:
    if sys.argv[1] == "--measure":
        measure(int(sys.argv[2]))
        return
    kind, n, engines = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "kv":
            binary = build.kvstore_buckets(Path(tmp), 262_144, ("v1",))[0]
        else:
            binary = build.biglist(Path(tmp))[0]
        with start_server(binary) as server:
            if kind == "kv":
                kv.load(server.port, n, VALUE_LEN)
            else:
                with LineClient(server.port, timeout=600) as client:
                    client.command(f"FILL {n}")
            for engine in engines:
                env = {**os.environ, "EKIDEN_TRACE_ENGINE": engine}
                subprocess.run(
                    [sys.executable, __file__, "--measure", str(server.pid)], env=env, check=True
                )


if __name__ == "__main__":
    main()
