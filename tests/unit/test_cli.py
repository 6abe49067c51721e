"""The command line itself: what `ekiden-trace --help` offers, and its internal commands."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO, run_tool

PUBLIC_COMMANDS = ("cflags", "points", "inspect", "diff", "attach", "recover")


def test_help_lists_the_public_commands_only() -> None:
    result = run_tool("--help")
    assert result.returncode == 0, result.stderr
    assert "_guard" not in result.stdout
    usage = result.stdout.splitlines()[0]
    assert f"{{{','.join(PUBLIC_COMMANDS)}}}" in usage
    # Each command is listed with its help, indented by four spaces.
    listed = re.findall(r"^ {4}(\S+)", result.stdout, re.M)
    assert listed == list(PUBLIC_COMMANDS)


def test_hidden_guard_command_still_runs() -> None:
    """The guardian that guard.py starts: told "done" before any state, it exits at once."""
    result = subprocess.run(
        [sys.executable, "-m", "ekiden_trace", "_guard"],
        input="done\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
