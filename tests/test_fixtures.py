"""The fixtures' own behaviour, without ekiden-trace: real processes, real sockets."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from clients import (
    REPO,
    CounterClient,
    KvClient,
    connected,
    fixture_binary,
    start_server,
)

FIXTURES = ("counter", "kvstore")
UPDATE_POINTS = {"counter": {"con_loop", "cl_loop"}, "kvstore": {"poll_loop"}}
KV_BUCKETS = 64
KV_MAX_CLIENTS = 64
KV_MAX_VALUE_LEN = 1024
KV_INBUF_SIZE = 2048


def build(name: str, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Compile fixtures/<name>/v1.c as the Makefile does, with flags after -g."""
    return subprocess.run(
        [
            "gcc", "-std=c99", "-D_GNU_SOURCE", "-g", *flags,
            "-Wall", "-Wextra", "-Werror", "-I", "probes",
            f"fixtures/{name}/v1.c", "-o", str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )  # fmt: skip


def djb2_bucket(key: str) -> int:
    """The bucket kvstore v1 puts key in."""
    h = 5381
    for byte in key.encode():
        h = (h * 33 + byte) % 2**64
    return h % KV_BUCKETS


def wait_until(predicate, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def counter():
    with start_server(fixture_binary("counter", "v1")) as server:
        yield server


@pytest.fixture
def kvstore():
    with start_server(fixture_binary("kvstore", "v1")) as server:
        yield server


# ---- building ----


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize(
    "flags", [("-O0",), ("-O2",), ("-O3",), ("-O2", "-DEKIDEN_DISABLE")], ids=" ".join
)
def test_builds_without_warnings(name, flags, tmp_path):
    result = build(name, tmp_path / name, *flags)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("name", FIXTURES)
def test_update_points_are_usdt_probes(name):
    notes = subprocess.run(
        ["readelf", "-n", str(fixture_binary(name, "v1"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    probes = re.findall(r"Provider: ekiden\s+Name: (\w+)", notes)
    assert set(probes) == UPDATE_POINTS[name]


@pytest.mark.parametrize("name", FIXTURES)
def test_unmarked_build_serves(name, tmp_path):
    binary = tmp_path / name
    result = build(name, binary, "-O2", "-DEKIDEN_DISABLE")
    assert result.returncode == 0, result.stderr
    notes = subprocess.run(
        ["readelf", "-n", str(binary)], capture_output=True, text=True, check=True
    ).stdout
    assert "ekiden" not in notes
    with start_server(binary) as server:
        if name == "counter":
            with CounterClient(server.port) as client:
                assert client.send("hi") == "v1 #1 echo: hi"
        else:
            with KvClient(server.port) as client:
                assert client.set("k", "v") == "OK"
                assert client.get("k") == "v"


def test_bad_arguments_exit_with_usage():
    for name in FIXTURES:
        binary = fixture_binary(name, "v1")
        for args in ([], ["1", "2"], ["port"], ["70000"]):
            result = subprocess.run([str(binary), *args], capture_output=True, text=True)
            assert result.returncode == 2, (name, args)
            assert result.stderr


# ---- counter ----


def test_counter_echoes_and_counts_clients(counter):
    with CounterClient(counter.port) as client:
        assert client.send("hello") == "v1 #1 echo: hello"
        assert client.send("hello again") == "v1 #1 echo: hello again"
        assert client.send("COUNT") == "clients 1"
    with CounterClient(counter.port) as client:
        assert client.send("second") == "v1 #2 echo: second"
        assert client.send("COUNT") == "clients 2"


def test_counter_const_val(counter):
    with CounterClient(counter.port) as client:
        assert client.send("CONST") == "const 42"


def test_counter_serves_one_client_at_a_time(counter):
    first = CounterClient(counter.port)
    second = CounterClient(counter.port, timeout=0.3)
    try:
        assert first.send("one") == "v1 #1 echo: one"
        second.send_raw(b"two\n")
        # Queued in the listen backlog until the first client leaves.
        with pytest.raises(TimeoutError):
            second.read_line()
        first.close()
        second.sock.settimeout(5.0)
        assert second.read_line() == "v1 #2 echo: two"
    finally:
        first.close()
        second.close()


def test_counter_partial_and_pipelined_lines(counter):
    with CounterClient(counter.port) as client:
        client.send_raw(b"hel")
        time.sleep(0.05)
        client.send_raw(b"lo\nwor")
        time.sleep(0.05)
        client.send_raw(b"ld\r\nCOUNT\n")
        assert [client.read_line() for _ in range(3)] == [
            "v1 #1 echo: hello",
            "v1 #1 echo: world",
            "clients 1",
        ]
        assert client.pipeline([f"line {i}" for i in range(500)]) == [
            f"v1 #1 echo: line {i}" for i in range(500)
        ]


def test_counter_line_too_long(counter):
    with CounterClient(counter.port) as client:
        client.send_raw(b"x" * 1024)
        assert client.read_line() == "ERR line too long"
        assert client.at_eof()
    with CounterClient(counter.port) as client:
        assert client.send("COUNT") == "clients 2"


# ---- kvstore ----


def test_kv_set_get_del_count(kvstore):
    with KvClient(kvstore.port) as kv:
        assert kv.count() == 0
        assert kv.get("a") is None
        assert kv.set("a", "1") == "OK"
        assert kv.set("b", "2") == "OK"
        assert kv.get("a") == "1"
        assert kv.count() == 2
        assert kv.set("a", "one") == "OK"
        assert kv.get("a") == "one"
        assert kv.count() == 2
        assert kv.delete("a") == "DELETED"
        assert kv.delete("a") == "NOTFOUND"
        assert kv.get("a") is None
        assert kv.count() == 1


def test_kv_values_keep_spaces(kvstore):
    with KvClient(kvstore.port) as kv:
        assert kv.set("greeting", "hello  big world ") == "OK"
        assert kv.get("greeting") == "hello  big world "
        assert kv.set("empty", "") == "OK"
        assert kv.get("empty") == ""
        assert kv.set("pct", "100% %s %n") == "OK"
        assert kv.get("pct") == "100% %s %n"


def test_kv_state_is_shared_between_clients(kvstore):
    with KvClient(kvstore.port) as a, KvClient(kvstore.port) as b:
        assert a.set("k", "from a") == "OK"
        assert b.get("k") == "from a"
        assert b.delete("k") == "DELETED"
        assert a.count() == 0


def test_kv_errors(kvstore):
    with KvClient(kvstore.port) as kv:
        cases = {
            "": "ERR unknown command",
            "FOO bar": "ERR unknown command",
            "set a b": "ERR unknown command",
            "SET": "ERR usage",
            "SET a": "ERR usage",
            "SET  a b": "ERR usage",
            "GET": "ERR usage",
            "GET a b": "ERR usage",
            "DEL": "ERR usage",
            "COUNT x": "ERR usage",
            "MODE": "ERR usage",
            "MODE sideways": "ERR usage",
        }
        assert kv.pipeline(list(cases)) == list(cases.values())
        assert kv.count() == 0


def test_kv_value_length_limit(kvstore):
    with KvClient(kvstore.port) as kv:
        assert kv.set("k", "v" * KV_MAX_VALUE_LEN) == "OK"
        assert kv.get("k") == "v" * KV_MAX_VALUE_LEN
        assert kv.set("k", "v" * (KV_MAX_VALUE_LEN + 1)) == "ERR too long"
        assert kv.get("k") == "v" * KV_MAX_VALUE_LEN


def test_kv_stats(kvstore):
    with KvClient(kvstore.port) as kv:
        kv.set("a", "1")
        kv.set("b", "2")
        kv.get("a")
        kv.command("NOPE")
        stats = kv.stats()
    assert stats == {
        "served": 5,
        "mode": "readwrite",
        "clients": 1,
        "version": 1,
        "port": kvstore.port,
        "max_clients": KV_MAX_CLIENTS,
        "max_value_len": KV_MAX_VALUE_LEN,
        "cmd_SET": 2,
        "cmd_GET": 1,
        "cmd_DEL": 0,
        "cmd_COUNT": 0,
        "cmd_STATS": 1,
        "cmd_MODE": 0,
        "cmd_QUIT": 0,
        "cmd_other": 1,
    }


def test_kv_stats_count_clients(kvstore):
    with connected(KvClient, kvstore.port, 3) as clients:
        for client in clients:
            client.count()  # answered, so accepted
        assert clients[0].stats()["clients"] == 3
        clients[1].close()
        clients[2].close()
        wait_until(lambda: clients[0].stats()["clients"] == 1, "clients=1")


def test_kv_mode_readonly(kvstore):
    with KvClient(kvstore.port) as kv, KvClient(kvstore.port) as other:
        kv.set("k", "v")
        assert kv.mode("readonly") == "OK"
        assert other.stats()["mode"] == "readonly"
        assert other.set("k", "w") == "ERR readonly"
        assert other.set("new", "w") == "ERR readonly"
        assert other.delete("k") == "ERR readonly"
        assert other.get("k") == "v"
        assert other.count() == 1
        assert kv.mode("readwrite") == "OK"
        assert other.set("k", "w") == "OK"
        assert kv.stats()["mode"] == "readwrite"


def test_kv_quit(kvstore):
    with KvClient(kvstore.port) as kv:
        kv.set("k", "v")
        kv.send_raw(b"QUIT\nGET k\n")
        assert kv.read_line() == "BYE"
        assert kv.at_eof()
    with KvClient(kvstore.port) as kv:
        assert kv.get("k") == "v"
        assert kv.stats()["clients"] == 1


def test_kv_pipeline_of_1000_commands(kvstore):
    with KvClient(kvstore.port) as kv:
        sets = [f"SET key{i} value {i}" for i in range(500)]
        gets = [f"GET key{i}" for i in range(500)]
        assert kv.pipeline(sets + gets) == ["OK"] * 500 + [f"VALUE value {i}" for i in range(500)]
        assert kv.count() == 500
        assert kv.stats()["served"] == 1002


def test_kv_partial_lines(kvstore):
    with KvClient(kvstore.port) as kv:
        for piece in (b"SE", b"T k hello ", b"world\r\nGET", b" k\nCOU", b"NT\n"):
            kv.send_raw(piece)
            time.sleep(0.02)
        assert [kv.read_line() for _ in range(3)] == ["OK", "VALUE hello world", "COUNT 1"]


def test_kv_partial_line_does_not_hold_up_others(kvstore):
    with KvClient(kvstore.port) as slow, KvClient(kvstore.port) as fast:
        slow.send_raw(b"SET slow half")
        assert fast.set("fast", "1") == "OK"
        assert fast.get("slow") is None
        slow.send_raw(b" done\n")
        assert slow.read_line() == "OK"
        assert fast.get("slow") == "half done"


def test_kv_line_too_long(kvstore):
    with KvClient(kvstore.port) as kv:
        kv.send_raw(b"SET k " + b"x" * KV_INBUF_SIZE)
        assert kv.read_line() == "ERR line too long"
        assert kv.at_eof()


def test_kv_concurrent_clients(kvstore):
    nclients, nkeys = 8, 100

    def work(n: int) -> list[str | None]:
        with KvClient(kvstore.port) as kv:
            for i in range(nkeys):
                assert kv.set(f"c{n}-{i}", f"{n}:{i}") == "OK"
            return [kv.get(f"c{n}-{i}") for i in range(nkeys)]

    with ThreadPoolExecutor(nclients) as pool:
        results = list(pool.map(work, range(nclients)))
    assert results == [[f"{n}:{i}" for i in range(nkeys)] for n in range(nclients)]
    with KvClient(kvstore.port) as kv:
        assert kv.count() == nclients * nkeys


def test_kv_colliding_keys(kvstore):
    keys = [f"key{i}" for i in range(1000)]
    chains: dict[int, list[str]] = {}
    for key in keys:
        chains.setdefault(djb2_bucket(key), []).append(key)
    chain = max(chains.values(), key=len)
    assert len(chain) >= 5

    with KvClient(kvstore.port) as kv:
        assert kv.pipeline([f"SET {k} v-{k}" for k in keys]) == ["OK"] * len(keys)
        assert kv.count() == 1000
        assert kv.pipeline([f"GET {k}" for k in keys]) == [f"VALUE v-{k}" for k in keys]
        # Entries are appended to their chain: unlink its head, middle and tail.
        gone = [chain[0], chain[len(chain) // 2], chain[-1]]
        assert kv.pipeline([f"DEL {k}" for k in gone]) == ["DELETED"] * 3
        assert kv.count() == 997
        for key in chain:
            assert kv.get(key) == (None if key in gone else f"v-{key}")
        assert kv.set(chain[0], "back") == "OK"
        assert kv.get(chain[0]) == "back"
        assert kv.count() == 998


def test_kv_busy_when_full(kvstore):
    with connected(KvClient, kvstore.port, KV_MAX_CLIENTS) as clients:
        for client in clients:
            client.count()
        with KvClient(kvstore.port) as extra:
            assert extra.read_line() == "ERR busy"
            assert extra.at_eof()
        clients[0].close()
        wait_until(lambda: clients[1].stats()["clients"] == KV_MAX_CLIENTS - 1, "a free slot")
        with KvClient(kvstore.port) as late:
            assert late.count() == 0


def test_kv_survives_client_that_leaves_mid_pipeline(kvstore):
    with KvClient(kvstore.port) as kv:
        kv.set("k", "v" * 1000)
    for _ in range(3):
        rude = socket.create_connection(("127.0.0.1", kvstore.port), timeout=5)
        rude.sendall(b"GET k\n" * 2000)
        # Unread replies make close() send a reset.
        rude.close()
    with KvClient(kvstore.port) as kv:
        assert kv.get("k") == "v" * 1000
    assert kvstore.alive()
