"""Soak: many consecutive updates kvstore v1 -> v2 -> v1 -> ... under steady load.

Run by tests/test_soak.py (50 updates, in CI) and `make soak` (500 updates,
which also writes the figures into RELIABILITY.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from clients import KvClient, fixture_binary, start_server

REPO = Path(__file__).resolve().parent.parent
XFORMS = {"v2": "xform_v1_v2.py", "v1": "xform_v2_v1.py"}
NKEYS = 2_000
CLIENTS = 3


@dataclass
class Load:
    """Clients sending requests on persistent connections until stopped."""

    port: int
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    worst_latency: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, index: int) -> None:
        try:
            with KvClient(self.port) as client:
                i = 0
                while not self.stop.is_set():
                    key = f"load{index}-{i % 100}"
                    started = time.monotonic()
                    ok = client.set(key, str(i)) == "OK" and client.get(key) == str(i)
                    self.worst_latency = max(self.worst_latency, time.monotonic() - started)
                    self.requests += 2
                    if not ok:
                        self.failures.append(f"client {index}: wrong answer for {key}")
                    i += 1
        except Exception as exc:  # a dropped connection or a timeout is a failure to report
            self.failures.append(f"client {index}: {exc!r}")


def footprint(pid: int) -> dict[str, int]:
    """fds, resident memory (kB) and mappings of a process."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return {
        "fds": len(list(Path(f"/proc/{pid}/fd").iterdir())),
        "rss_kb": rss,
        "mappings": len(Path(f"/proc/{pid}/maps").read_text().splitlines()),
    }


def soak(updates: int) -> dict:
    """Run the soak; return its figures."""
    keys = {f"key{i}": f"value {i}" for i in range(NKEYS)}
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as admin:
        admin.pipeline([f"SET {k} {v}" for k, v in keys.items()])
        load = Load(server.port)
        threads = [threading.Thread(target=load.run, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        first = footprint(server.pid)
        pauses, failed_updates = [], []
        version = "v1"
        started = time.monotonic()
        for n in range(updates):
            version = "v2" if version == "v1" else "v1"
            xform = REPO / "fixtures" / "kvstore" / XFORMS[version]
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ekiden_trace",
                    "attach",
                    str(server.pid),
                    "--new",
                    str(fixture_binary("kvstore", version)),
                    "--xform",
                    str(xform),
                    "--json",
                ],
                capture_output=True,
                text=True,
                cwd=REPO,
                timeout=120,
            )
            if result.returncode != 0:
                failed_updates.append(f"update {n + 1} to {version}: {result.stderr.strip()}")
                break
            pauses.append(json.loads(result.stdout)["pause"])
        elapsed = time.monotonic() - started
        if version == "v2":  # end on v1, as the soak started
            version = "v1"
        last = footprint(server.pid)
        load.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        answers = admin.pipeline([f"GET {k}" for k in keys])
        lost = sum(a != f"VALUE {v}" for a, v in zip(answers, keys.values(), strict=True))
        pauses.sort()
        return {
            "updates": len(pauses),
            "failed_updates": failed_updates,
            "seconds": round(elapsed, 1),
            "requests": load.requests,
            "failed_requests": len(load.failures),
            "failures": load.failures[:5],
            "worst_latency_ms": round(load.worst_latency * 1000, 1),
            "pause_median_ms": round(pauses[len(pauses) // 2] * 1000, 1) if pauses else None,
            "pause_max_ms": round(pauses[-1] * 1000, 1) if pauses else None,
            "keys_lost": lost,
            "before": first,
            "after": last,
            "server_alive": server.alive(),
        }


SOAK_BEGIN, SOAK_END = "<!-- soak: written by make soak -->", "<!-- end of soak -->"


def write_reliability(figures: dict, path: Path) -> None:
    """Put the soak's figures into RELIABILITY.md, between its soak markers (the rest of
    the file is kept)."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in figures.items())
    section = (
        f"{SOAK_BEGIN}\n"
        f"Soak run by `make soak` on {time.strftime('%Y-%m-%d')}: {figures['updates']} "
        f"consecutive updates of kvstore v1 -> v2 -> v1 -> ... with {NKEYS} keys, while "
        f"{CLIENTS} clients send SET/GET pairs on persistent connections.\n\n"
        "| figure | value |\n|---|---|\n" + rows + f"\n{SOAK_END}"
    )
    text = path.read_text() if path.exists() else "# Reliability figures\n\n"
    if SOAK_BEGIN in text and SOAK_END in text:
        before, _, rest = text.partition(SOAK_BEGIN)
        text = before + section + rest.partition(SOAK_END)[2]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--updates", type=int, default=500)
    parser.add_argument("--write", action="store_true", help="write RELIABILITY.md")
    args = parser.parse_args()
    figures = soak(args.updates)
    print(json.dumps(figures, indent=2))
    if args.write:
        write_reliability(figures, REPO / "RELIABILITY.md")


if __name__ == "__main__":
    main()
