"""The examples/ programs, run as a user runs them, with their output checked."""

from __future__ import annotations

import re
import subprocess
import sys

from clients import KvClient, fixture_binary, start_server
from conftest import REPO, needs_ptrace

EXAMPLES = REPO / "examples"


def run_example(*args: str, timeout: float = 120) -> str:
    """Run `python examples/ARGS...`; its stdout, after checking it succeeded cleanly."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 0, output
    return result.stdout


@needs_ptrace
def test_marking_a_server_keeps_its_client_and_its_count() -> None:
    out = run_example("update_greeter.py")
    pid = re.search(r"started greeter v1, pid (\d+)", out)
    assert pid is not None, out
    assert "client: hello ada (greeting 1)" in out
    assert "client: hello grace (greeting 2)" in out
    assert re.search(rf"process {pid[1]}: updated .*greeter_v1 -> .*greeter_v2", out), out
    # the same connection, answered by v2, counting on from v1
    assert "client: HELLO linus! (greeting 3, from v2)" in out
    assert f"pid {pid[1]} is still running: True" in out


@needs_ptrace
def test_transformer_carries_renamed_and_rescaled_fields() -> None:
    out = run_example("update_bank.py")
    without, with_xform, rest = out.split("$ ekiden-trace ")[1:4]
    assert "diff bank_v1 bank_v2   (exit 9)" in without  # it would drop state
    assert "struct account: field name removed (dropped, likely renamed to owner)" in without
    assert "bank_v2.c:total_cents              initialised by v2" in without
    assert "diff bank_v1 bank_v2 --xform xform_v1_v2.py   (exit 0)" in with_xform
    assert "struct account: field name renamed to owner" in with_xform
    assert "struct account: field cents added (set by a transformer)" in with_xform
    assert 'balance removed (dropped, replaced by @field("struct account", "cents"))' in with_xform
    assert "bank_v2.c:total_cents              transformer" in with_xform
    assert "v1> list: ada: 12 euros | grace: 30 euros | end" in out
    assert re.search(r"attach \d+ .*\(exit 0\)", rest), rest
    assert "v2> open linus 5: ok" in out
    assert (
        "v2> list: ada: 12.00 EUR | grace: 30.00 EUR | linus: 5.00 EUR | total: 47.00 EUR | end"
        in out
    )


@needs_ptrace
def test_inspect_json_lists_tagged_variables_and_heap() -> None:
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        assert client.set("alpha", "one") == "OK"
        assert client.set("beta", "two") == "OK"
        out = run_example("inspect_json.py", str(server.pid))
        assert server.alive()
        assert client.get("alpha") == "one"  # left running as it was
    lines = out.splitlines()
    assert lines[0] == f"pid {server.pid} stopped at poll_loop in main"
    assert "nclients (int) = 1" in lines
    assert "table (struct table *) = -> #1 struct table" in lines
    assert "count_served:served (unsigned long) = 2" in lines
    assert any(
        line.startswith("config (struct server_config) = {limits={max_clients=64")
        and f"endpoint={{port={server.port}}}" in line
        for line in lines
    ), out
    assert "8 heap objects: 4 char, 2 struct entry, 1 struct table, 1 struct entry *" in lines
    assert lines[-1] == "strings on the heap: alpha, beta, one, two"
