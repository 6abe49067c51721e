"""A description of the machine and software the benchmarks ran on."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

from procs import REPO


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


# Changes to tracked files, except BENCHMARKS.md: a previous run's output is no change.
CHANGES = ("status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md")


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), *CHANGES],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def describe() -> dict[str, str]:
    """CPU, cores, memory, kernel, Python, compiler, commit and date, as display strings."""
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout
    return {
        "CPU": _cpu_model(),
        "cores": f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable)",
        "memory": f"{_memory_gb():.1f} GB",
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "Python": platform.python_version(),
        "compiler": gcc.splitlines()[0] if gcc else "unknown",
        "ekiden-trace commit": _commit(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
