"""`ekiden-trace inspect` on live fixture servers with real clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clients import CounterClient, KvClient, code_bytes, fixture_binary, start_server
from conftest import (
    compile_marked,
    needs_ptrace,
    process_state,
    run_tool,
    tool_json,
    tracer_of,
)

pytestmark = needs_ptrace

NKEYS = 1000


@pytest.fixture
def kvstore() -> Iterator[Any]:
    with start_server(fixture_binary("kvstore", "v1")) as server:
        yield server


def variables(snapshot: dict) -> dict[str, dict]:
    return {v["name"]: v for v in snapshot["variables"]}


def follow(snapshot: dict, pointer: dict | None) -> dict | None:
    """The heap object a JSON pointer value refers to."""
    if pointer is None:
        return None
    return snapshot["objects"][str(pointer["ref"])]


def table_contents(snapshot: dict) -> tuple[dict[str, str], list[int]]:
    """Walk table -> buckets -> chains in the JSON; return {key: value} and chain lengths."""
    table = follow(snapshot, variables(snapshot)["table"]["value"])["value"]["fields"]
    buckets = follow(snapshot, table["buckets"])
    assert buckets["count"] == table["nbuckets"]
    contents: dict[str, str] = {}
    chains = []
    for head in buckets["value"]:
        length = 0
        entry = follow(snapshot, head)
        while entry is not None:
            fields = entry["value"]["fields"]
            key = follow(snapshot, fields["key"])["string"]
            assert key not in contents, f"{key} seen twice"
            contents[key] = follow(snapshot, fields["value"])["string"]
            length += 1
            entry = follow(snapshot, fields["next"])
        chains.append(length)
    return contents, chains


def assert_untouched(server: Any, before: bytes, client: KvClient) -> None:
    """The server runs, is not traced, serves the same client, and its code is unchanged."""
    assert server.alive()
    assert tracer_of(server.pid) == 0
    assert process_state(server.pid) in "SR"
    assert client.command("COUNT").startswith("COUNT")
    assert code_bytes(server.pid) == before


def test_inspect_shows_every_key_as_the_server_answers(kvstore: Any) -> None:
    with KvClient(kvstore.port) as client:
        keys = {f"key{i}": f"value {i} of {NKEYS}" for i in range(NKEYS)}
        assert set(client.pipeline([f"SET {k} {v}" for k, v in keys.items()])) == {"OK"}
        client.mode("readonly")
        served = client.stats()["served"]  # counts this STATS request too
        before = code_bytes(kvstore.pid)

        snapshot = tool_json("inspect", str(kvstore.pid))

        contents, chains = table_contents(snapshot)
        assert max(chains) > 1, "1,000 keys in 64 buckets must chain"
        answers = client.pipeline([f"GET {k}" for k in contents])
        assert {k: a.removeprefix("VALUE ") for k, a in zip(contents, answers, strict=True)} == keys
        assert contents == keys

        table = follow(snapshot, variables(snapshot)["table"]["value"])["value"]["fields"]
        assert table["count"] == client.count() == NKEYS
        assert table["hash"]["function"] == "djb2"
        config = variables(snapshot)["config"]["value"]["fields"]
        assert config["mode"]["enum"] == "MODE_READONLY"
        assert config["endpoint"]["active"] == "port"
        assert config["endpoint"]["members"]["port"] == kvstore.port
        assert variables(snapshot)["served"]["value"] == served
        assert_untouched(kvstore, before, client)


def test_long_strings_are_read_whole(kvstore: Any) -> None:
    """Strings longer than the first read of a string, many of them across page ends."""
    with KvClient(kvstore.port) as client:
        keys = {f"long{i}": f"{i:04d}" + chr(ord("a") + i % 26) * (1000 - 4) for i in range(60)}
        assert set(client.pipeline([f"SET {k} {v}" for k, v in keys.items()])) == {"OK"}

        contents, _ = table_contents(tool_json("inspect", str(kvstore.pid)))

        assert contents == keys


def test_inspect_agrees_with_drgn(kvstore: Any) -> None:
    drgn = pytest.importorskip("drgn")
    with KvClient(kvstore.port) as client:
        client.pipeline([f"SET k{i} v{i * i}" for i in range(200)])
        snapshot = tool_json("inspect", str(kvstore.pid))
        ours, _ = table_contents(snapshot)

        prog = drgn.Program()
        prog.set_pid(kvstore.pid)
        prog.load_debug_info([str(fixture_binary("kvstore", "v1"))])
        table = prog["table"]
        theirs = {}
        for i in range(int(table.nbuckets)):
            entry = table.buckets[i]
            while entry:
                theirs[entry.key.string_().decode()] = entry.value.string_().decode()
                entry = entry.next
        assert ours == theirs
        config = variables(snapshot)["config"]["value"]["fields"]
        assert config["limits"]["fields"]["max_clients"] == int(prog["config"].limits.max_clients)
        assert config["histogram"] == [int(x) for x in prog["config"].histogram]
        fds = variables(snapshot)["client_fds"]["value"]
        assert fds == [int(x) for x in prog["client_fds"]]


def test_text_view_reads_like_c(kvstore: Any) -> None:
    with KvClient(kvstore.port) as client:
        client.set("greeting", "hello world")
        result = run_tool("inspect", str(kvstore.pid))
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "stopped at update point poll_loop in main" in out
        assert "struct table *table  /* global */ = #1" in out
        assert "int client_fds[64] " in out
        assert '"greeting"' in out and '"hello world"' in out
        assert "&djb2" in out
        assert "MODE_READWRITE" in out


def test_idle_server_reaches_its_point_within_one_second(kvstore: Any) -> None:
    with KvClient(kvstore.port) as client:
        client.set("a", "b")
        before = code_bytes(kvstore.pid)
        # Blocked in poll with no client activity: --timeout 1 fails unless it gets there in 1 s.
        result = run_tool("inspect", "--timeout", "1", str(kvstore.pid))
        assert result.returncode == 0, result.stderr
        assert_untouched(kvstore, before, client)


def test_counter_locals_of_active_frames() -> None:
    with start_server(fixture_binary("counter", "v1")) as server:
        first = CounterClient(server.port)
        assert first.send("hello") == "v1 #1 echo: hello"
        first.send_raw(b"partial line")
        snapshot = tool_json("inspect", "--timeout", "1", str(server.pid))
        assert snapshot["stop"]["point"] == "cl_loop"
        assert snapshot["stop"]["function"] == "handle_client"
        found = variables(snapshot)
        assert found["nclients"]["value"] == 1
        pending = found["in"]["value"]["fields"]
        assert pending["len"] == len(b"partial line")
        assert pending["data"]["chars"].startswith("partial line")
        assert first.send(" done") == "v1 #1 echo: partial line done"
        first.close()

        # Between clients main waits in accept: handle_client's local is not active.
        snapshot = tool_json("inspect", "--point", "con_loop", "--timeout", "2", str(server.pid))
        found = variables(snapshot)
        assert found["in"]["value"] is None and "not active" in found["in"]["absent"]
        assert found["nclients"]["value"] == 1
        second = CounterClient(server.port)
        assert second.send("again") == "v1 #2 echo: again"
        second.close()


def test_now_reads_where_the_process_is(kvstore: Any) -> None:
    with KvClient(kvstore.port) as client:
        client.set("x", "y")
        before = code_bytes(kvstore.pid)
        snapshot = tool_json("inspect", "--now", str(kvstore.pid))
        stop = snapshot["stop"]
        assert stop["point"] is None
        assert stop["function"] == "main" and stop["frames"].index("main") >= 1
        assert stop["frames"][0].startswith("__poll@libc")
        assert sum(line.startswith("=>") for line in stop["code"]) == 1
        assert variables(snapshot)["nclients"]["value"] == 1
        assert_untouched(kvstore, before, client)
        assert client.get("x") == "y"


def test_json_is_stable_and_complete(kvstore: Any) -> None:
    snapshot = tool_json("inspect", str(kvstore.pid))
    assert snapshot["format"] == "ekiden-trace/inspect/1"
    assert set(snapshot) >= {"pid", "binary", "build_id", "stop", "variables", "objects"}
    for var in snapshot["variables"]:
        assert set(var) >= {"name", "key", "scope", "type", "address", "value"}
    json.dumps(snapshot)


@pytest.mark.parametrize("level", ["-O0", "-O1", "-O3"])
def test_inspect_at_other_optimisation_levels(level: str, tmp_path: Path) -> None:
    binary = tmp_path / f"kvstore{level}"
    source = fixture_binary("kvstore", "v1").with_suffix(".c")
    compile_marked(source, binary, "-std=c99", "-D_GNU_SOURCE", "-g", level)
    with start_server(binary) as server, KvClient(server.port) as client:
        keys = {f"k{i}": f"v{i}" for i in range(100)}
        client.pipeline([f"SET {k} {v}" for k, v in keys.items()])
        snapshot = tool_json("inspect", str(server.pid))
        assert table_contents(snapshot)[0] == keys
        assert variables(snapshot)["served"]["value"] == 100
        assert variables(snapshot)["client_fds"]["value"][0] > 2
