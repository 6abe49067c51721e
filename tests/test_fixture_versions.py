"""Each later fixture version's own behaviour, without ekiden-trace: real processes, real sockets.

counter v2, kvstore v2 and kvstore v3 are the targets of updates from the version before
them; these tests check what each one answers by itself, how it builds, and that its
marks, types and exported functions are what an update from the previous version expects.
"""

from __future__ import annotations

import re
import shutil
import struct
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
from conftest import needs_ptrace
from elftools.elf.elffile import ELFFile

# (fixture, version, the version it is an update of)
VERSIONS = [("counter", "v2", "v1"), ("kvstore", "v2", "v1"), ("kvstore", "v3", "v2")]
VERSION_IDS = [f"{name}-{version}" for name, version, _ in VERSIONS]
KV_VERSIONS = ("v2", "v3")
KV_BUCKETS = {"v2": 64, "v3": 256}
KV_MAX_CLIENTS = 64
KV_MAX_VALUE_LEN = 1024
KV_MAX_KEY_LEN = 64
NOTE_TAG = 1
NOTE_FROM = 2


def build(name: str, version: str, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Compile fixtures/<name>/<version>.c as the Makefile does, with flags after -g."""
    return subprocess.run(
        [
            "gcc", "-std=c99", "-D_GNU_SOURCE", "-g", *flags,
            "-Wall", "-Wextra", "-Werror", "-I", "probes",
            f"fixtures/{name}/{version}.c", "-o", str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )  # fmt: skip


def djb2(key: str) -> int:
    h = 5381
    for byte in key.encode():
        h = (h * 33 + byte) % 2**64
    return h


def fnv1a(key: str) -> int:
    h = 0xCBF29CE484222325
    for byte in key.encode():
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h


def kv_bucket(version: str, key: str) -> int:
    """The bucket kvstore <version> puts key in."""
    hash_function = djb2 if version == "v2" else fnv1a
    return hash_function(key) % KV_BUCKETS[version]


def wait_until(predicate, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def update_points(binary: Path) -> set[str]:
    notes = subprocess.run(
        ["readelf", "-n", str(binary)], capture_output=True, text=True, check=True
    ).stdout
    return set(re.findall(r"Provider: ekiden\s+Name: (\w+)", notes))


def ekiden_marks(binary: Path, note_type: int) -> set[str]:
    """Names in the .note.ekiden records of one type (tags or from marks)."""
    with open(binary, "rb") as f:
        data = ELFFile(f).get_section_by_name(".note.ekiden").data()
    names = set()
    offset = 0
    while offset + 12 <= len(data):
        namesz, descsz, kind = struct.unpack_from("<III", data, offset)
        offset += 12
        owner = data[offset : offset + namesz]
        offset += (namesz + 3) & ~3
        desc = data[offset : offset + descsz]
        offset += (descsz + 3) & ~3
        assert owner == b"ekiden\0"
        if kind == note_type:
            _source, name = desc[8:].split(b"\0")[:2]
            names.add(name.decode())
    return names


def symbols(binary: Path) -> dict[str, tuple[str, str]]:
    """Symbol name -> (type, binding), from .symtab."""
    with open(binary, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return {
            sym.name: (sym["st_info"]["type"], sym["st_info"]["bind"])
            for sym in symtab.iter_symbols()
        }


def gdb(*args: str) -> str:
    """Run gdb in batch mode and return its stdout."""
    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed (make setup installs it)")
    result = subprocess.run(
        ["gdb", "-nx", "-batch", "-iex", "set debuginfod enabled off", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout


@pytest.fixture
def counter():
    with start_server(fixture_binary("counter", "v2")) as server:
        yield server


@pytest.fixture(params=KV_VERSIONS)
def kv_version(request) -> str:
    return request.param


@pytest.fixture
def kvstore(kv_version):
    """A running kvstore of kv_version (v2 or v3)."""
    with start_server(fixture_binary("kvstore", kv_version)) as server:
        yield server


@pytest.fixture
def kvstore_v2():
    with start_server(fixture_binary("kvstore", "v2")) as server:
        yield server


@pytest.fixture
def kvstore_v3():
    with start_server(fixture_binary("kvstore", "v3")) as server:
        yield server


# ---- building, marks and types ----


@pytest.mark.parametrize(("name", "version", "previous"), VERSIONS, ids=VERSION_IDS)
@pytest.mark.parametrize(
    "flags", [("-O0",), ("-O2",), ("-O3",), ("-O2", "-DEKIDEN_DISABLE")], ids=" ".join
)
def test_builds_without_warnings(name, version, previous, flags, tmp_path):
    result = build(name, version, tmp_path / version, *flags)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize(("name", "version", "previous"), VERSIONS, ids=VERSION_IDS)
def test_update_points_are_those_of_v1(name, version, previous):
    points = update_points(fixture_binary(name, version))
    assert points == update_points(fixture_binary(name, "v1"))
    assert points == update_points(fixture_binary(name, previous))


@pytest.mark.parametrize(("name", "version", "previous"), VERSIONS, ids=VERSION_IDS)
def test_tags_keep_the_previous_names(name, version, previous):
    tags = ekiden_marks(fixture_binary(name, version), NOTE_TAG)
    old_tags = ekiden_marks(fixture_binary(name, previous), NOTE_TAG)
    added = {"counter": {"nlines"}}.get(name, set())
    assert tags == old_tags | added
    assert not old_tags & added
    froms = ekiden_marks(fixture_binary(name, version), NOTE_FROM)
    assert froms == ekiden_marks(fixture_binary(name, previous), NOTE_FROM)


@pytest.mark.parametrize(("name", "version", "previous"), VERSIONS, ids=VERSION_IDS)
def test_unmarked_build_serves(name, version, previous, tmp_path):
    binary = tmp_path / version
    result = build(name, version, binary, "-O2", "-DEKIDEN_DISABLE")
    assert result.returncode == 0, result.stderr
    notes = subprocess.run(
        ["readelf", "-n", str(binary)], capture_output=True, text=True, check=True
    ).stdout
    assert "ekiden" not in notes
    with start_server(binary) as server:
        if name == "counter":
            with CounterClient(server.port) as client:
                assert client.send("hi") == "v2 #1 echo: hi"
                assert client.send("LINES") == "lines 2"
        else:
            with KvClient(server.port) as client:
                assert client.set("k", "v") == "OK"
                assert client.get("k") == "v"
                assert client.hits("k") == 1
                assert client.stats()["version"] == int(version[1:])


def test_bad_arguments_exit_with_usage():
    for name, version, _ in VERSIONS:
        binary = fixture_binary(name, version)
        for args in ([], ["1", "2"], ["port"], ["70000"]):
            result = subprocess.run([str(binary), *args], capture_output=True, text=True)
            assert result.returncode == 2, (name, version, args)
            assert result.stderr


KV_TYPES = {
    "v1": {
        "struct entry": ["char *key;", "char *value;", "struct entry *next;"],
        "struct table": [
            "struct entry **buckets;",
            "size_t nbuckets;",
            "size_t count;",
            "unsigned long (*hash)(const char *);",
        ],
        "struct limits": ["int max_clients;", "int max_value_len;"],
        "struct server_config": [
            "struct limits limits;",
            "enum mode mode;",
            "enum endpoint_kind kind;",
            "union {",
            "int port;",
            "char path[16];",
            "} endpoint;",
            "unsigned long histogram[8];",
        ],
    },
    "v2": {
        "struct entry": [
            "char *key;",
            "char *value;",
            "unsigned long hits;",
            "struct entry *next;",
        ],
        "struct table": [
            "struct entry **buckets;",
            "size_t nbuckets;",
            "size_t nentries;",
            "unsigned long (*hash)(const char *);",
        ],
        "struct limits": ["int max_clients;", "long max_value_len;", "int max_key_len;"],
        "struct server_config": [
            "struct limits limits;",
            "enum mode mode;",
            "enum endpoint_kind kind;",
            "union {",
            "int port;",
            "char path[16];",
            "} endpoint;",
        ],
    },
}
KV_TYPES["v3"] = KV_TYPES["v2"]


@pytest.mark.parametrize("version", ["v1", *KV_VERSIONS])
def test_kv_types_are_what_the_update_changes(version):
    """The struct layouts each version's header comment describes, as its DWARF says."""
    types = KV_TYPES[version]
    out = gdb(
        *(arg for t in types for arg in ("-ex", f"ptype {t}")),
        str(fixture_binary("kvstore", version)),
    )
    found = {}
    for block in re.findall(r"type = (struct \w+) \{\n(.*?)\n\}", out, re.S):
        found[block[0]] = [line.strip() for line in block[1].splitlines()]
    assert found == types


def test_kv_v2_config_has_a_static_initialiser():
    """max_key_len is in v2's .data: a config carried over from v1 keeps it."""
    binary = str(fixture_binary("kvstore", "v2"))
    out = gdb("-ex", "print config.limits", binary)
    assert "max_clients = 0, max_value_len = 0, max_key_len = 64" in out


@pytest.mark.parametrize("flags", [("-O0",), ("-O2",), ("-O3",)], ids=" ".join)
def test_kv_v3_exports_its_table_functions(flags, tmp_path):
    binary = tmp_path / "v3"
    result = build("kvstore", "v3", binary, *flags)
    assert result.returncode == 0, result.stderr
    syms = symbols(binary)
    assert syms["table_new"] == ("STT_FUNC", "STB_GLOBAL")
    assert syms["table_put"] == ("STT_FUNC", "STB_GLOBAL")
    assert "fnv1a" in syms
    assert "djb2" not in syms
    v2_syms = symbols(fixture_binary("kvstore", "v2"))
    assert "djb2" in v2_syms
    assert "table_put" not in v2_syms


@needs_ptrace
def test_kv_v3_table_functions_can_be_called_from_outside(kvstore_v3):
    """What a transformer does: call table_new and table_put inside the running process."""
    with KvClient(kvstore_v3.port) as kv:
        assert kv.set("before", "1") == "OK"
        out = gdb(
            "-p",
            str(kvstore_v3.pid),
            "-ex",
            'print table_put(table, "from-gdb", "hello world")->hits',
            "-ex",
            'print table_put(table, "before", "2")->value',
            "-ex",
            "print table_new(16)->nbuckets",
            "-ex",
            "print table->hash == fnv1a",
        )
        values = re.findall(r"^\$\d+ = (.*)$", out, re.M)
        assert len(values) == 4, out
        assert values[0] == "0"  # a new entry has no hits
        assert values[1].endswith(' "2"')  # table_put returns the entry it updated
        assert values[2:] == ["16", "1"]
        assert kv.get("from-gdb") == "hello world"
        assert kv.get("before") == "2"
        assert kv.count() == 2
        assert kv.hits("from-gdb") == 1
    assert kvstore_v3.alive()


# ---- counter v2 ----


def test_counter_echoes_v2_and_counts_clients(counter):
    with CounterClient(counter.port) as client:
        assert client.send("hello") == "v2 #1 echo: hello"
        assert client.send("hello again") == "v2 #1 echo: hello again"
        assert client.send("COUNT") == "clients 1"
        assert client.send("CONST") == "const 42"
    with CounterClient(counter.port) as client:
        assert client.send("second") == "v2 #2 echo: second"
        assert client.send("COUNT") == "clients 2"


def test_counter_lines_counts_across_clients(counter):
    with CounterClient(counter.port) as client:
        assert client.send("LINES") == "lines 1"
        assert client.send("a") == "v2 #1 echo: a"
        assert client.send("COUNT") == "clients 1"
        assert client.send("LINES") == "lines 4"
    with CounterClient(counter.port) as client:
        assert client.send("b") == "v2 #2 echo: b"
        assert client.send("LINES") == "lines 6"
    # A line too long is not answered: it does not count.
    with CounterClient(counter.port) as client:
        client.send_raw(b"x" * 1024)
        assert client.read_line() == "ERR line too long"
        assert client.at_eof()
    with CounterClient(counter.port) as client:
        assert client.send("LINES") == "lines 7"
        assert client.send("lines") == "v2 #4 echo: lines"


def test_counter_serves_one_client_at_a_time(counter):
    first = CounterClient(counter.port)
    second = CounterClient(counter.port, timeout=0.3)
    try:
        assert first.send("one") == "v2 #1 echo: one"
        second.send_raw(b"LINES\n")
        with pytest.raises(TimeoutError):
            second.read_line()
        first.close()
        second.sock.settimeout(5.0)
        assert second.read_line() == "lines 2"
    finally:
        first.close()
        second.close()


def test_counter_partial_and_pipelined_lines(counter):
    with CounterClient(counter.port) as client:
        client.send_raw(b"hel")
        time.sleep(0.05)
        client.send_raw(b"lo\nLIN")
        time.sleep(0.05)
        client.send_raw(b"ES\r\nCOUNT\n")
        assert [client.read_line() for _ in range(3)] == [
            "v2 #1 echo: hello",
            "lines 2",
            "clients 1",
        ]
        assert client.pipeline([f"line {i}" for i in range(500)]) == [
            f"v2 #1 echo: line {i}" for i in range(500)
        ]
        assert client.send("LINES") == "lines 504"


# ---- kvstore v2 and v3: what they share ----


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
        assert kv.set("pct", "100% %s %n ") == "OK"
        assert kv.get("pct") == "100% %s %n "


def test_kv_hits_counts_gets_of_each_key(kvstore):
    with KvClient(kvstore.port) as kv, KvClient(kvstore.port) as other:
        assert kv.hits("a") is None
        assert kv.set("a", "1") == "OK"
        assert kv.set("b", "2") == "OK"
        assert kv.hits("a") == 0
        assert kv.get("a") == "1"
        assert other.get("a") == "1"
        assert kv.get("missing") is None
        assert other.hits("a") == 2
        assert other.hits("b") == 0
        # HITS itself is not a hit; SET keeps the entry and its hits.
        assert kv.hits("a") == 2
        assert kv.set("a", "one") == "OK"
        assert kv.hits("a") == 2
        # A deleted key starts again from 0.
        assert kv.delete("a") == "DELETED"
        assert kv.hits("a") is None
        assert kv.set("a", "again") == "OK"
        assert kv.hits("a") == 0


def test_kv_errors(kvstore):
    with KvClient(kvstore.port) as kv:
        cases = {
            "": "ERR unknown command",
            "FOO bar": "ERR unknown command",
            "hits a": "ERR unknown command",
            "SET": "ERR usage",
            "SET a": "ERR usage",
            "SET  a b": "ERR usage",
            "GET a b": "ERR usage",
            "DEL": "ERR usage",
            "HITS": "ERR usage",
            "HITS a b": "ERR usage",
            "COUNT x": "ERR usage",
            "MODE sideways": "ERR usage",
            "SET " + "k" * (KV_MAX_KEY_LEN + 1) + " v": "ERR key too long",
            "SET k " + "v" * (KV_MAX_VALUE_LEN + 1): "ERR too long",
        }
        assert kv.pipeline(list(cases)) == list(cases.values())
        assert kv.count() == 0


def test_kv_key_and_value_length_limits(kvstore):
    longest_key = "k" * KV_MAX_KEY_LEN
    with KvClient(kvstore.port) as kv:
        assert kv.set(longest_key, "v" * KV_MAX_VALUE_LEN) == "OK"
        assert kv.get(longest_key) == "v" * KV_MAX_VALUE_LEN
        assert kv.set(longest_key + "k", "v") == "ERR key too long"
        assert kv.get(longest_key + "k") is None
        assert kv.set(longest_key, "v" * (KV_MAX_VALUE_LEN + 1)) == "ERR too long"
        assert kv.get(longest_key) == "v" * KV_MAX_VALUE_LEN
        assert kv.count() == 1


def test_kv_stats(kvstore, kv_version):
    with KvClient(kvstore.port) as kv:
        kv.set("a", "1")
        kv.get("a")
        kv.hits("a")
        kv.command("NOPE")
        stats = kv.stats()
    expected = {
        "served": 5,
        "mode": "readwrite",
        "clients": 1,
        "version": int(kv_version[1:]),
        "port": kvstore.port,
        "max_clients": KV_MAX_CLIENTS,
        "max_value_len": KV_MAX_VALUE_LEN,
        "max_key_len": KV_MAX_KEY_LEN,
    }
    if kv_version == "v3":
        expected["buckets"] = KV_BUCKETS["v3"]
    assert stats == expected


def test_kv_stats_count_clients(kvstore):
    with connected(KvClient, kvstore.port, 3) as clients:
        for client in clients:
            client.count()
        assert clients[0].stats()["clients"] == 3
        clients[1].close()
        wait_until(lambda: clients[0].stats()["clients"] == 2, "clients=2")


def test_kv_mode_readonly(kvstore):
    with KvClient(kvstore.port) as kv:
        kv.set("k", "v")
        assert kv.mode("readonly") == "OK"
        assert kv.stats()["mode"] == "readonly"
        assert kv.set("k", "w") == "ERR readonly"
        assert kv.delete("k") == "ERR readonly"
        assert kv.get("k") == "v"
        assert kv.hits("k") == 1
        assert kv.mode("readwrite") == "OK"
        assert kv.set("k", "w") == "OK"


def test_kv_quit_and_partial_lines(kvstore):
    with KvClient(kvstore.port) as kv:
        for piece in (b"SE", b"T k hello ", b"world\r\nGET", b" k\nHI", b"TS k\n"):
            kv.send_raw(piece)
            time.sleep(0.02)
        assert [kv.read_line() for _ in range(3)] == ["OK", "VALUE hello world", "HITS 1"]
        kv.send_raw(b"QUIT\nGET k\n")
        assert kv.read_line() == "BYE"
        assert kv.at_eof()
    with KvClient(kvstore.port) as kv:
        assert kv.hits("k") == 1


def test_kv_colliding_keys(kvstore, kv_version):
    keys = [f"key{i}" for i in range(1000)]
    chains: dict[int, list[str]] = {}
    for key in keys:
        chains.setdefault(kv_bucket(kv_version, key), []).append(key)
    chain = max(chains.values(), key=len)
    assert len(chain) >= 5

    with KvClient(kvstore.port) as kv:
        assert kv.pipeline([f"SET {k} v-{k}" for k in keys]) == ["OK"] * len(keys)
        assert kv.count() == 1000
        assert kv.pipeline([f"GET {k}" for k in keys]) == [f"VALUE v-{k}" for k in keys]
        assert kv.pipeline([f"HITS {k}" for k in keys]) == ["HITS 1"] * len(keys)
        # Entries are appended to their chain: unlink its head, middle and tail.
        gone = [chain[0], chain[len(chain) // 2], chain[-1]]
        assert kv.pipeline([f"DEL {k}" for k in gone]) == ["DELETED"] * 3
        assert kv.count() == 997
        for key in chain:
            assert kv.get(key) == (None if key in gone else f"v-{key}")
        assert kv.stats()["served"] == 3000 + 3 + 2 + len(chain) + 1


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


def test_kv_busy_when_full(kvstore):
    with connected(KvClient, kvstore.port, KV_MAX_CLIENTS) as clients:
        for client in clients:
            client.count()
        with KvClient(kvstore.port) as extra:
            assert extra.read_line() == "ERR busy"
            assert extra.at_eof()


# ---- kvstore: one version each ----


def test_kv_v2_has_no_histogram(kvstore_v2):
    with KvClient(kvstore_v2.port) as kv:
        kv.set("a", "1")
        stats = kv.stats()
    assert stats["version"] == 2
    assert not [field for field in stats if field.startswith("cmd_")]
    assert "buckets" not in stats


def test_kv_v3_holds_1000_keys_in_256_buckets(kvstore_v3):
    keys = [f"user:{i:04d}" for i in range(1000)]
    buckets = {kv_bucket("v3", key) for key in keys}
    assert len(buckets) > KV_BUCKETS["v2"]  # more buckets than v2 could use
    with KvClient(kvstore_v3.port) as kv:
        assert kv.pipeline([f"SET {k} value of {k}" for k in keys]) == ["OK"] * 1000
        assert kv.count() == 1000
        assert kv.pipeline([f"GET {k}" for k in keys]) == [f"VALUE value of {k}" for k in keys]
        stats = kv.stats()
    assert stats["version"] == 3
    assert stats["buckets"] == 256
    assert stats["served"] == 2002
