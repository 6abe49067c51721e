"""ekiden-trace as a systemd unit's ExecReload runs it: no terminal, the main PID from
$MAINPID, stdout and stderr on the journal (JOURNAL_STREAM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from clients import CounterClient, fixture_binary, start_server
from conftest import REPO, needs_ptrace

pytestmark = needs_ptrace

# What `ExecReload=ekiden-trace attach $MAINPID --new NEW --json` runs.
RELOAD = 'py=$0 new=$1; shift; exec "$py" -m ekiden_trace attach $MAINPID --new "$new" --json "$@"'


def reload(pid: int, new: Path, *extra: str) -> tuple[int, str, str]:
    """Run the reload command as systemd does: its own session (no controlling terminal),
    stdin /dev/null, MAINPID set, stdout and stderr on a stream named by JOURNAL_STREAM."""
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    info = os.fstat(out_write)
    env = {**os.environ, "MAINPID": str(pid), "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
    proc = subprocess.Popen(
        ["/bin/sh", "-c", RELOAD, sys.executable, str(new), *extra],
        stdin=subprocess.DEVNULL,
        stdout=out_write,
        stderr=err_write,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    os.close(out_write)
    os.close(err_write)
    with os.fdopen(out_read) as out, os.fdopen(err_read) as err:
        stdout, stderr = out.read(), err.read()
    return proc.wait(timeout=120), stdout, stderr


def test_reload_updates_the_main_pid_and_prints_one_journal_line() -> None:
    with (
        start_server(fixture_binary("counter", "v1")) as server,
        CounterClient(server.port) as client,
    ):
        assert client.send("one") == "v1 #1 echo: one"
        code, stdout, stderr = reload(server.pid, fixture_binary("counter", "v2"))
        assert code == 0, stderr
        assert stdout.count("\n") == 1  # one journal entry
        report = json.loads(stdout)
        assert report["pid"] == server.pid and report["outcome"] == "updated"
        assert client.send("two") == "v2 #1 echo: two"


def test_failed_reload_is_one_error_line_and_the_service_runs_on() -> None:
    with start_server(fixture_binary("kvstore", "v1")) as server:
        crashing = fixture_binary("faulty", "v2-crash")
        code, stdout, stderr = reload(server.pid, crashing, "--allow-drop", "--timeout", "2")
        assert code == 11, stderr
        assert stderr.count("\n") == 1 and stderr.startswith("ekiden-trace: ")
        assert json.loads(stdout)["outcome"] == "rolled back"
        assert server.alive()
