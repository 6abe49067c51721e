"""Ctrl-C, SIGTERM or SIGHUP to the tool abort cleanly: the service keeps serving."""

from __future__ import annotations

import os
import signal
import time

import pytest
from clients import CounterClient, KvClient, code_bytes, fixture_binary, start_server
from conftest import needs_ptrace, start_tool, tracer_of, wait_traced

pytestmark = needs_ptrace


@pytest.mark.parametrize("signo", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_while_waiting_for_a_point_releases_the_target(signo: int) -> None:
    with start_server(fixture_binary("counter", "v1")) as server:
        client = CounterClient(server.port)
        assert client.send("one") == "v1 #1 echo: one"
        before = code_bytes(server.pid)
        # con_loop is never reached while the client stays: the tool waits, armed.
        running = start_tool(
            "attach",
            str(server.pid),
            "--new",
            str(fixture_binary("counter", "v2")),
            "--point",
            "con_loop",
            "--timeout",
            "30",
        )
        wait_traced(server.pid)
        time.sleep(0.2)
        running.send_signal(signo)
        _, err = running.communicate(timeout=30)
        assert running.returncode == 130, err
        assert f"interrupted by {signal.Signals(signo).name}" in err and "released" in err
        assert tracer_of(server.pid) == 0 and code_bytes(server.pid) == before
        assert client.send("two") == "v1 #1 echo: two"
        client.close()


def test_signal_during_the_restore_rolls_back() -> None:
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.set("kept", "yes")
        # This v2 never reaches an update point after the exec: the tool sits in the restore.
        running = start_tool(
            "attach",
            str(server.pid),
            "--new",
            str(fixture_binary("faulty", "v2-hang")),
            "--allow-drop",  # v2-hang is kvstore v2, which drops some of v1's state
            "--timeout",
            "60",
        )
        deadline = time.monotonic() + 20
        while "v2-hang" not in os.path.realpath(f"/proc/{server.pid}/exe"):
            assert time.monotonic() < deadline, "the exec never happened"
            time.sleep(0.005)
        time.sleep(0.2)
        running.send_signal(signal.SIGTERM)
        _, err = running.communicate(timeout=60)
        assert running.returncode == 11, err
        assert "rolled back" in err and "interrupted by SIGTERM" in err
        assert client.get("kept") == "yes"
        assert client.stats()["version"] == 1
