"""Every fixture version's own behaviour, without ekiden-trace: real processes, real sockets.

What the versions share is checked on each of them, with that version's own answers
(see Version). counter v2, kvstore v2 and kvstore v3 are the targets of updates from the
version before them, so their marks, types and exported functions are also checked
against what such an update expects.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from clients import (
    CounterClient,
    KvClient,
    LineClient,
    Server,
    build_fixture,
    connected,
    fixture_binary,
    start_server,
)
from conftest import needs_ptrace
from elftools.elf.elffile import ELFFile

UPDATE_POINTS = {"counter": {"con_loop", "cl_loop"}, "kvstore": {"poll_loop"}}
KV_MAX_CLIENTS = 64
KV_MAX_VALUE_LEN = 1024
KV_MAX_KEY_LEN = 64
KV_INBUF_SIZE = 2048
NOTE_TAG = 1
NOTE_FROM = 2
PIECE_DELAY = 0.05  # between the pieces of a line sent in pieces


def djb2(key: str) -> int:
    """The hash of kvstore v1 and v2."""
    h = 5381
    for byte in key.encode():
        h = (h * 33 + byte) % 2**64
    return h


def fnv1a(key: str) -> int:
    """The hash of kvstore v3."""
    h = 0xCBF29CE484222325
    for byte in key.encode():
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h


@dataclass(frozen=True)
class Version:
    """One version of a fixture, and what sets its answers apart from the other versions."""

    fixture: str
    name: str
    previous: str | None = None  # the version this one is an update of
    new_tags: frozenset[str] = frozenset()  # tags the previous version does not have
    lines: bool = False  # counter: the LINES command
    hits: bool = False  # kvstore: the HITS command, which counts the GETs of a key
    max_key_len: int | None = None  # kvstore: longer keys get "ERR key too long"
    buckets: int = 64  # kvstore: the size of the hash table
    hash_function: Callable[[str], int] = djb2  # kvstore: the table's hash

    def __str__(self) -> str:
        return f"{self.fixture}-{self.name}"

    @property
    def number(self) -> int:
        return int(self.name.removeprefix("v"))

    @property
    def binary(self) -> Path:
        return fixture_binary(self.fixture, self.name)

    def bucket(self, key: str) -> int:
        """kvstore: the bucket this version puts key in."""
        return self.hash_function(key) % self.buckets


COUNTER_V1 = Version("counter", "v1")
COUNTER_V2 = Version("counter", "v2", "v1", new_tags=frozenset({"nlines"}), lines=True)
KV_V1 = Version("kvstore", "v1")
KV_V2 = Version("kvstore", "v2", "v1", hits=True, max_key_len=KV_MAX_KEY_LEN)
KV_V3 = replace(KV_V2, name="v3", previous="v2", buckets=256, hash_function=fnv1a)
COUNTERS = (COUNTER_V1, COUNTER_V2)
KVSTORES = (KV_V1, KV_V2, KV_V3)
VERSIONS = COUNTERS + KVSTORES
UPDATES = tuple(version for version in VERSIONS if version.previous)


def only(*versions: Version) -> pytest.MarkDecorator:
    """Run a test on these versions of one fixture instead of on all its versions."""
    return pytest.mark.parametrize(f"{versions[0].fixture}_version", versions, ids=str)


def build(version: Version, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Compile the version's source as the Makefile does, with flags after -g."""
    return build_fixture(version.fixture, version.name, out, *flags)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll predicate until it holds; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def send_in_pieces(client: LineClient, *pieces: bytes) -> None:
    """Send pieces one by one, with a pause after each, so that they arrive apart."""
    for piece in pieces:
        client.send_raw(piece)
        time.sleep(PIECE_DELAY)


def echo(version: Version, client: int, line: str) -> str:
    """counter's answer to an ordinary line from its client-th client."""
    return f"{version.name} #{client} echo: {line}"


def elf_notes(binary: Path) -> str:
    """`readelf -n` of binary."""
    return subprocess.run(
        ["readelf", "-n", str(binary)], capture_output=True, text=True, check=True
    ).stdout


def update_points(binary: Path) -> set[str]:
    """The names of the ekiden USDT probes in binary."""
    return set(re.findall(r"Provider: ekiden\s+Name: (\w+)", elf_notes(binary)))


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


@pytest.fixture(params=COUNTERS, ids=str)
def counter_version(request: pytest.FixtureRequest) -> Version:
    return request.param


@pytest.fixture
def counter(counter_version: Version) -> Iterator[Server]:
    """A running counter of counter_version."""
    with start_server(counter_version.binary) as server:
        yield server


@pytest.fixture(params=KVSTORES, ids=str)
def kvstore_version(request: pytest.FixtureRequest) -> Version:
    return request.param


@pytest.fixture
def kvstore(kvstore_version: Version) -> Iterator[Server]:
    """A running kvstore of kvstore_version."""
    with start_server(kvstore_version.binary) as server:
        yield server


# ---- building and marks ----


@pytest.mark.parametrize("version", VERSIONS, ids=str)
@pytest.mark.parametrize(
    "flags", [("-O0",), ("-O2",), ("-O3",), ("-O2", "-DEKIDEN_DISABLE")], ids=" ".join
)
def test_builds_without_warnings(version: Version, flags: tuple[str, ...], tmp_path: Path) -> None:
    result = build(version, tmp_path / version.name, *flags)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("version", VERSIONS, ids=str)
def test_update_points_are_usdt_probes(version: Version) -> None:
    """Every version has the points of v1, so an update maps them one to one."""
    points = update_points(version.binary)
    assert points == UPDATE_POINTS[version.fixture]
    if version.previous:
        assert points == update_points(fixture_binary(version.fixture, version.previous))


@pytest.mark.parametrize("version", UPDATES, ids=str)
def test_tags_keep_the_previous_names(version: Version) -> None:
    previous = fixture_binary(version.fixture, version.previous)
    tags = ekiden_marks(version.binary, NOTE_TAG)
    old_tags = ekiden_marks(previous, NOTE_TAG)
    assert tags == old_tags | version.new_tags
    assert not old_tags & version.new_tags
    assert ekiden_marks(version.binary, NOTE_FROM) == ekiden_marks(previous, NOTE_FROM)


@pytest.mark.parametrize("version", VERSIONS, ids=str)
def test_unmarked_build_serves(version: Version, tmp_path: Path) -> None:
    binary = tmp_path / version.name
    result = build(version, binary, "-O2", "-DEKIDEN_DISABLE")
    assert result.returncode == 0, result.stderr
    assert "ekiden" not in elf_notes(binary)
    with start_server(binary) as server:
        if version.fixture == "counter":
            with CounterClient(server.port) as client:
                assert client.send("hi") == echo(version, 1, "hi")
                if version.lines:
                    assert client.send("LINES") == "lines 2"
        else:
            with KvClient(server.port) as client:
                assert client.set("k", "v") == "OK"
                assert client.get("k") == "v"
                if version.hits:
                    assert client.hits("k") == 1
                assert client.stats()["version"] == version.number


@pytest.mark.parametrize("version", VERSIONS, ids=str)
@pytest.mark.parametrize(
    "args",
    [[], ["1", "2"], ["port"], ["70000"]],
    ids=["no port", "two ports", "not a number", "out of range"],
)
def test_bad_arguments_exit_with_usage(version: Version, args: list[str]) -> None:
    result = subprocess.run([str(version.binary), *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr


# ---- kvstore types and exported functions ----

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


def test_kv_types_are_what_the_update_changes(kvstore_version: Version) -> None:
    """The struct layouts each version's header comment describes, as its DWARF says."""
    types = KV_TYPES[kvstore_version.name]
    out = gdb(
        *(arg for t in types for arg in ("-ex", f"ptype {t}")),
        str(kvstore_version.binary),
    )
    found = {}
    for block in re.findall(r"type = (struct \w+) \{\n(.*?)\n\}", out, re.S):
        found[block[0]] = [line.strip() for line in block[1].splitlines()]
    assert found == types


def test_kv_v2_config_has_a_static_initialiser() -> None:
    """max_key_len is in v2's .data: a config carried over from v1 keeps it."""
    out = gdb("-ex", "print config.limits", str(KV_V2.binary))
    assert "max_clients = 0, max_value_len = 0, max_key_len = 64" in out


@pytest.mark.parametrize("flags", [("-O0",), ("-O2",), ("-O3",)], ids=" ".join)
def test_kv_v3_exports_its_table_functions(flags: tuple[str, ...], tmp_path: Path) -> None:
    binary = tmp_path / "v3"
    result = build(KV_V3, binary, *flags)
    assert result.returncode == 0, result.stderr
    syms = symbols(binary)
    assert syms["table_new"] == ("STT_FUNC", "STB_GLOBAL")
    assert syms["table_put"] == ("STT_FUNC", "STB_GLOBAL")
    assert "fnv1a" in syms
    assert "djb2" not in syms
    v2_syms = symbols(KV_V2.binary)
    assert "djb2" in v2_syms
    assert "table_put" not in v2_syms


@needs_ptrace
@only(KV_V3)
def test_kv_v3_table_functions_can_be_called_from_outside(kvstore: Server) -> None:
    """What a transformer does: call table_new and table_put inside the running process."""
    with KvClient(kvstore.port) as kv:
        assert kv.set("before", "1") == "OK"
        out = gdb(
            "-p",
            str(kvstore.pid),
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
    assert kvstore.alive()


# ---- counter ----


def test_counter_echoes_and_counts_clients(counter_version: Version, counter: Server) -> None:
    with CounterClient(counter.port) as client:
        assert client.send("hello") == echo(counter_version, 1, "hello")
        assert client.send("hello again") == echo(counter_version, 1, "hello again")
        assert client.send("COUNT") == "clients 1"
        assert client.send("CONST") == "const 42"
    with CounterClient(counter.port) as client:
        assert client.send("second") == echo(counter_version, 2, "second")
        assert client.send("COUNT") == "clients 2"


@only(COUNTER_V2)
def test_counter_lines_counts_across_clients(counter_version: Version, counter: Server) -> None:
    with CounterClient(counter.port) as client:
        assert client.send("LINES") == "lines 1"
        assert client.send("a") == echo(counter_version, 1, "a")
        assert client.send("COUNT") == "clients 1"
        assert client.send("LINES") == "lines 4"
    with CounterClient(counter.port) as client:
        assert client.send("b") == echo(counter_version, 2, "b")
        assert client.send("LINES") == "lines 6"
        assert client.send("lines") == echo(counter_version, 2, "lines")


def test_counter_serves_one_client_at_a_time(counter_version: Version, counter: Server) -> None:
    first = CounterClient(counter.port)
    second = CounterClient(counter.port, timeout=0.3)
    try:
        assert first.send("one") == echo(counter_version, 1, "one")
        second.send_raw(b"two\n")
        # Queued in the listen backlog until the first client leaves.
        with pytest.raises(TimeoutError):
            second.read_line()
        first.close()
        second.sock.settimeout(5.0)
        assert second.read_line() == echo(counter_version, 2, "two")
        if counter_version.lines:
            assert second.send("LINES") == "lines 3"
    finally:
        first.close()
        second.close()


def test_counter_partial_and_pipelined_lines(counter_version: Version, counter: Server) -> None:
    with CounterClient(counter.port) as client:
        send_in_pieces(client, b"hel", b"lo\nwor", b"ld\r\nCOUNT\n")
        assert [client.read_line() for _ in range(3)] == [
            echo(counter_version, 1, "hello"),
            echo(counter_version, 1, "world"),
            "clients 1",
        ]
        assert client.pipeline([f"line {i}" for i in range(500)]) == [
            echo(counter_version, 1, f"line {i}") for i in range(500)
        ]
        if counter_version.lines:
            send_in_pieces(client, b"LIN", b"ES\r\n")
            assert client.read_line() == "lines 504"


def test_counter_line_too_long(counter_version: Version, counter: Server) -> None:
    with CounterClient(counter.port) as client:
        client.send_raw(b"x" * 1024)
        assert client.read_line() == "ERR line too long"
        assert client.at_eof()
    with CounterClient(counter.port) as client:
        assert client.send("COUNT") == "clients 2"
        if counter_version.lines:
            # The line too long was not answered: it does not count.
            assert client.send("LINES") == "lines 2"


# ---- kvstore ----


def test_kv_set_get_del_count(kvstore: Server) -> None:
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


def test_kv_values_keep_spaces(kvstore: Server) -> None:
    with KvClient(kvstore.port) as kv:
        assert kv.set("greeting", "hello  big world ") == "OK"
        assert kv.get("greeting") == "hello  big world "
        assert kv.set("empty", "") == "OK"
        assert kv.get("empty") == ""
        assert kv.set("pct", "100% %s %n ") == "OK"
        assert kv.get("pct") == "100% %s %n "


def test_kv_state_is_shared_between_clients(kvstore: Server) -> None:
    with KvClient(kvstore.port) as a, KvClient(kvstore.port) as b:
        assert a.set("k", "from a") == "OK"
        assert b.get("k") == "from a"
        assert b.delete("k") == "DELETED"
        assert a.count() == 0


@only(KV_V2, KV_V3)
def test_kv_hits_counts_gets_of_each_key(kvstore: Server) -> None:
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


def test_kv_errors(kvstore_version: Version, kvstore: Server) -> None:
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
        "SET k " + "v" * (KV_MAX_VALUE_LEN + 1): "ERR too long",
    }
    if kvstore_version.hits:
        cases |= {"hits a": "ERR unknown command", "HITS": "ERR usage", "HITS a b": "ERR usage"}
    if kvstore_version.max_key_len:
        cases["SET " + "k" * (kvstore_version.max_key_len + 1) + " v"] = "ERR key too long"
    with KvClient(kvstore.port) as kv:
        assert kv.pipeline(list(cases)) == list(cases.values())
        assert kv.count() == 0


def test_kv_length_limits(kvstore_version: Version, kvstore: Server) -> None:
    key = "k" * (kvstore_version.max_key_len or 1)  # the longest key, where there is a limit
    longest_value = "v" * KV_MAX_VALUE_LEN
    with KvClient(kvstore.port) as kv:
        assert kv.set(key, longest_value) == "OK"
        assert kv.get(key) == longest_value
        assert kv.set(key, longest_value + "v") == "ERR too long"
        assert kv.get(key) == longest_value
        if kvstore_version.max_key_len:
            assert kv.set(key + "k", "v") == "ERR key too long"
            assert kv.get(key + "k") is None
        assert kv.count() == 1


def test_kv_stats(kvstore_version: Version, kvstore: Server) -> None:
    with KvClient(kvstore.port) as kv:
        kv.set("a", "1")
        kv.set("b", "2")
        kv.get("a")
        if kvstore_version.hits:
            kv.hits("a")
        kv.command("NOPE")
        stats = kv.stats()
    own_fields = {
        # Only v1 counts requests by command.
        "v1": {
            "cmd_SET": 2,
            "cmd_GET": 1,
            "cmd_DEL": 0,
            "cmd_COUNT": 0,
            "cmd_STATS": 1,
            "cmd_MODE": 0,
            "cmd_QUIT": 0,
            "cmd_other": 1,
        },
        "v2": {"max_key_len": KV_MAX_KEY_LEN},
        "v3": {"max_key_len": KV_MAX_KEY_LEN, "buckets": KV_V3.buckets},
    }
    assert stats == {
        "served": 6 if kvstore_version.hits else 5,
        "mode": "readwrite",
        "clients": 1,
        "version": kvstore_version.number,
        "port": kvstore.port,
        "max_clients": KV_MAX_CLIENTS,
        "max_value_len": KV_MAX_VALUE_LEN,
        **own_fields[kvstore_version.name],
    }


def test_kv_stats_count_clients(kvstore: Server) -> None:
    with connected(KvClient, kvstore.port, 3) as clients:
        for client in clients:
            client.count()  # answered, so accepted
        assert clients[0].stats()["clients"] == 3
        clients[1].close()
        wait_until(lambda: clients[0].stats()["clients"] == 2, "clients=2")
        clients[2].close()
        wait_until(lambda: clients[0].stats()["clients"] == 1, "clients=1")


def test_kv_mode_readonly(kvstore_version: Version, kvstore: Server) -> None:
    with KvClient(kvstore.port) as kv, KvClient(kvstore.port) as other:
        kv.set("k", "v")
        assert kv.mode("readonly") == "OK"
        assert other.stats()["mode"] == "readonly"
        assert other.set("k", "w") == "ERR readonly"
        assert other.set("new", "w") == "ERR readonly"
        assert other.delete("k") == "ERR readonly"
        assert other.get("k") == "v"
        if kvstore_version.hits:
            assert other.hits("k") == 1
        assert other.count() == 1
        assert kv.mode("readwrite") == "OK"
        assert other.set("k", "w") == "OK"
        assert kv.stats()["mode"] == "readwrite"


def test_kv_quit(kvstore_version: Version, kvstore: Server) -> None:
    with KvClient(kvstore.port) as kv:
        kv.set("k", "v")
        kv.send_raw(b"QUIT\nGET k\n")
        assert kv.read_line() == "BYE"
        assert kv.at_eof()
    with KvClient(kvstore.port) as kv:
        if kvstore_version.hits:
            assert kv.hits("k") == 0  # the GET after QUIT was not served
        assert kv.get("k") == "v"
        assert kv.stats()["clients"] == 1


def test_kv_pipeline_of_1000_commands(kvstore: Server) -> None:
    with KvClient(kvstore.port) as kv:
        sets = [f"SET key{i} value {i}" for i in range(500)]
        gets = [f"GET key{i}" for i in range(500)]
        assert kv.pipeline(sets + gets) == ["OK"] * 500 + [f"VALUE value {i}" for i in range(500)]
        assert kv.count() == 500
        assert kv.stats()["served"] == 1002


def test_kv_partial_lines(kvstore_version: Version, kvstore: Server) -> None:
    with KvClient(kvstore.port) as kv:
        send_in_pieces(kv, b"SE", b"T k hello ", b"world\r\nGET", b" k\nCOU", b"NT\n")
        assert [kv.read_line() for _ in range(3)] == ["OK", "VALUE hello world", "COUNT 1"]
        if kvstore_version.hits:
            send_in_pieces(kv, b"HI", b"TS k\n")
            assert kv.read_line() == "HITS 1"


def test_kv_partial_line_does_not_hold_up_others(kvstore: Server) -> None:
    with KvClient(kvstore.port) as slow, KvClient(kvstore.port) as fast:
        slow.send_raw(b"SET slow half")
        assert fast.set("fast", "1") == "OK"
        assert fast.get("slow") is None
        slow.send_raw(b" done\n")
        assert slow.read_line() == "OK"
        assert fast.get("slow") == "half done"


def test_kv_line_too_long(kvstore: Server) -> None:
    with KvClient(kvstore.port) as kv:
        kv.send_raw(b"SET k " + b"x" * KV_INBUF_SIZE)
        assert kv.read_line() == "ERR line too long"
        assert kv.at_eof()


def test_kv_concurrent_clients(kvstore: Server) -> None:
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


def test_kv_colliding_keys(kvstore_version: Version, kvstore: Server) -> None:
    keys = [f"key{i}" for i in range(1000)]
    chains: dict[int, list[str]] = {}
    for key in keys:
        chains.setdefault(kvstore_version.bucket(key), []).append(key)
    chain = max(chains.values(), key=len)
    assert len(chain) >= 5

    with KvClient(kvstore.port) as kv:
        assert kv.pipeline([f"SET {k} v-{k}" for k in keys]) == ["OK"] * len(keys)
        assert kv.count() == 1000
        assert kv.pipeline([f"GET {k}" for k in keys]) == [f"VALUE v-{k}" for k in keys]
        if kvstore_version.hits:
            assert kv.pipeline([f"HITS {k}" for k in keys]) == ["HITS 1"] * len(keys)
        # Entries are appended to their chain: unlink its head, middle and tail.
        gone = [chain[0], chain[len(chain) // 2], chain[-1]]
        assert kv.pipeline([f"DEL {k}" for k in gone]) == ["DELETED"] * 3
        assert kv.count() == 997
        for key in chain:
            assert kv.get(key) == (None if key in gone else f"v-{key}")
        # Served so far: SET, GET (and HITS) of each key, two COUNTs, the DELs, the chain's
        # GETs and this STATS.
        per_key = 3 if kvstore_version.hits else 2
        assert kv.stats()["served"] == per_key * len(keys) + 2 + len(gone) + len(chain) + 1
        assert kv.set(chain[0], "back") == "OK"
        assert kv.get(chain[0]) == "back"
        assert kv.count() == 998


@only(KV_V3)
def test_kv_v3_holds_1000_keys_in_256_buckets(kvstore: Server) -> None:
    keys = [f"user:{i:04d}" for i in range(1000)]
    buckets = {KV_V3.bucket(key) for key in keys}
    assert len(buckets) > KV_V2.buckets  # more buckets than v2 could use
    with KvClient(kvstore.port) as kv:
        assert kv.pipeline([f"SET {k} value of {k}" for k in keys]) == ["OK"] * 1000
        assert kv.count() == 1000
        assert kv.pipeline([f"GET {k}" for k in keys]) == [f"VALUE value of {k}" for k in keys]
        stats = kv.stats()
    assert stats["version"] == 3
    assert stats["buckets"] == 256
    assert stats["served"] == 2002


def test_kv_busy_when_full(kvstore: Server) -> None:
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


def test_kv_survives_client_that_leaves_mid_pipeline(kvstore: Server) -> None:
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
