"""A target must never die because ekiden-trace died: SIGKILL the tool at many moments."""

from __future__ import annotations

import signal
import time

import pytest
from clients import CounterClient, KvClient, code_bytes, fixture_binary, start_server
from conftest import (
    needs_ptrace,
    process_state,
    start_tool,
    tool_json,
    tracer_of,
    wait_traced,
)

pytestmark = needs_ptrace

# Seconds of client traffic before the kill: before the tool attaches, while it reads
# the binary, and (after_attach) at moments of its wait at armed update points.
KILLS = [(0.02, False), (0.1, False), (0.0, True), (0.01, True), (0.05, True), (0.2, True)]


@pytest.mark.parametrize(("delay", "after_attach"), KILLS)
def test_target_survives_tool_killed_while_waiting(delay: float, after_attach: bool) -> None:
    with start_server(fixture_binary("counter", "v1")) as server:
        client = CounterClient(server.port)
        assert client.send("before") == "v1 #1 echo: before"
        before = code_bytes(server.pid)
        # The client keeps main in handle_client, so con_loop is never reached and the
        # tool waits with the marks armed, stopping the process at every cl_loop.
        tool = start_tool(
            "inspect", "--point", "con_loop", "--timeout", "30", str(server.pid), quiet=True
        )
        if after_attach:
            wait_traced(server.pid, tool.pid)
        for i in range(int(delay / 0.01)):
            client.send(f"during {i}")
            time.sleep(0.005)
        tool.send_signal(signal.SIGKILL)
        tool.wait()

        for i in range(20):  # each line passes cl_loop, which may still be armed
            assert client.send(f"after {i}") == f"v1 #1 echo: after {i}"
        assert server.alive() and tracer_of(server.pid) == 0
        assert process_state(server.pid) in "SR"
        assert code_bytes(server.pid) == before
        # And a later tool still finds it in good order.
        snapshot = tool_json("inspect", "--timeout", "2", str(server.pid))
        assert snapshot["stop"]["point"] == "cl_loop"
        client.close()


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1])
def test_target_survives_tool_killed_during_capture(delay: float) -> None:
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.pipeline([f"SET key{i} {'v' * 50}{i}" for i in range(20_000)])
        before = code_bytes(server.pid)
        tool = start_tool("inspect", str(server.pid), quiet=True)
        wait_traced(server.pid, tool.pid)
        time.sleep(delay)
        tool.send_signal(signal.SIGKILL)
        tool.wait()
        assert client.count() == 20_000
        assert client.get("key19999") == "v" * 50 + "19999"
        assert server.alive() and tracer_of(server.pid) == 0
        assert code_bytes(server.pid) == before
