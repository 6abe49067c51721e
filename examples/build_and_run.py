"""What the examples share: run ekiden-trace, and build a marked C file as a user would."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path


def ekiden_trace(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ekiden-trace command of this Python (`python -m ekiden_trace ARGS`)."""
    return subprocess.run(
        [sys.executable, "-m", "ekiden_trace", *args], capture_output=True, text=True
    )


def build(source: Path, out_dir: Path) -> Path:
    """cc $(ekiden-trace cflags) -g -O2 NAME.c -o OUT_DIR/NAME, run in the source's folder
    (file statics are named by the source path as compiled: here `NAME.c`); the binary."""
    cflags = shlex.split(ekiden_trace("cflags").stdout)
    out = out_dir / source.stem
    command = ["cc", *cflags, "-g", "-O2", source.name, "-o", str(out)]
    subprocess.run(command, check=True, cwd=source.parent)
    return out
