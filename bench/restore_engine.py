"""Measure the restore of kvstore's heap, compiled against the Python encoder (issue 14).

    XDG_CACHE_HOME=... python bench/restore_engine.py 100000 [--python] [--iovecs]

Loads kvstore v1 (built with --buckets buckets) with N keys of 100-byte values, takes
the reference snapshot, builds its columns, and places the heap into a running kvstore
v2 (plan v1 -> v2): by the compiled path with its phases, by one iovec per object when
--iovecs, and by the Python encoder when --python.  Not a test: timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "tests")]

from build import kvstore_buckets  # noqa: E402
from clients import start_server  # noqa: E402
from conftest import REPO  # noqa: E402
from kv import load  # noqa: E402
from placing import columns_of, place, plan_for, reference_snapshot, stopped_backend  # noqa: E402

from ekiden_trace.native.build import core  # noqa: E402
from ekiden_trace.state.core import place as core_place  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("keys", type=int)
    parser.add_argument("--python", action="store_true", help="time the Python encoder too")
    parser.add_argument("--iovecs", action="store_true", help="time one iovec per object too")
    parser.add_argument("--buckets", type=int, default=262_144, help="kvstore's NBUCKETS")
    options = parser.parse_args()
    core()  # built before any timing, as the tool does before the pause
    with tempfile.TemporaryDirectory() as directory:
        v1, v2 = kvstore_buckets(Path(directory), options.buckets, ("v1", "v2"))
        measure(v1, v2, options)


def measure(v1: Path, v2: Path, options: argparse.Namespace) -> None:
    plan, transformers = plan_for(v1, v2, REPO / "fixtures" / "kvstore" / "xform_v1_v2.py")
    with start_server(v1) as server:
        clock = time.perf_counter()
        load(server.port, options.keys, 100)
        print(f"loaded {options.keys} keys in {time.perf_counter() - clock:.1f} s")
        clock = time.perf_counter()
        snapshot = reference_snapshot(server.pid)
        print(f"reference capture: {time.perf_counter() - clock:.1f} s")
        heap = columns_of(snapshot, plan.old)
    print(f"{len(heap)} objects, {len(heap.data) / 1e6:.1f} MB")
    runs = [("compiled, spans", heap)]
    if options.iovecs:
        runs.append(("compiled, one iovec per object", heap))
    if options.python:
        runs.append(("python encoder", None))
    for name, columns in runs:  # each into a v2 of its own: no run pays another's faults
        with start_server(v2) as target, stopped_backend(target.pid, plan.new) as backend:
            core_place.SPAN_GAP = 0 if "iovec" in name else 1024
            placed = place(backend, plan, snapshot, transformers, columns)
        phases = ", ".join(
            f"{k} {v:.0f}" if k == "spans" else f"{k} {v * 1000:.0f} ms"
            for k, v in placed.timings.items()
        )
        print(
            f"{name}: {placed.seconds * 1000:.0f} ms for {placed.objects_written} objects, "
            f"{placed.bytes_written / 1e6:.1f} MB ({phases or 'no phases'})"
        )


if __name__ == "__main__":
    main()
