"""`ekiden-trace attach --new`: live updates of fixture servers with clients connected."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from clients import CounterClient, KvClient, fixture_binary, start_server
from conftest import REPO, needs_ptrace, process_state, run_tool, tracer_of

pytestmark = needs_ptrace

XFORMS = REPO / "fixtures" / "kvstore"


def attach(pid: int, new: Path, *extra: str) -> dict:
    """Update pid to new, require success, and return the JSON report."""
    result = run_tool("attach", str(pid), "--new", str(new), "--json", *extra, timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(result.stdout)
    assert report["outcome"] == "updated"
    return report


def fd_table(pid: int) -> dict[str, tuple[str, str]]:
    """fd number -> (what it refers to, its open flags), for leak and FD_CLOEXEC checks."""
    fd_dir = Path(f"/proc/{pid}/fd")
    table = {}
    for fd in os.listdir(fd_dir):
        info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        flags = next(line.split()[1] for line in info.splitlines() if line.startswith("flags:"))
        table[fd] = (os.readlink(fd_dir / fd), flags)
    return table


def process_context(pid: int) -> tuple[bytes, bytes, str]:
    """argv, environment and cwd of a process, which an update must keep."""
    proc = Path(f"/proc/{pid}")
    return (
        (proc / "cmdline").read_bytes(),
        (proc / "environ").read_bytes(),
        os.readlink(proc / "cwd"),
    )


def test_counter_v1_to_v2_keeps_both_clients() -> None:
    with start_server(fixture_binary("counter", "v1")) as server:
        inside = CounterClient(server.port)
        assert inside.send("one") == "v1 #1 echo: one"
        waiting = CounterClient(server.port)  # queued behind the first: not accepted yet
        cpus = os.sched_getaffinity(server.pid)
        report = attach(server.pid, fixture_binary("counter", "v2"))
        assert os.sched_getaffinity(server.pid) == cpus  # it shared one CPU with the tool
        assert report["point"] == "cl_loop"
        assert report["pid"] == server.pid
        assert "main:nclients" in report["moved"] and "handle_client:in" in report["moved"]
        assert "main:nlines" in report["initialised"]
        assert inside.send("two") == "v2 #1 echo: two"
        assert inside.send("COUNT") == "clients 1"
        assert inside.send("LINES") == "lines 3"  # nlines starts at 0 in v2
        inside.close()
        assert waiting.send("three") == "v2 #2 echo: three"
        assert server.alive()
        waiting.close()


def all_keys_read_back(client: KvClient, keys: dict[str, str]) -> None:
    answers = client.pipeline([f"GET {k}" for k in keys])
    assert answers == [f"VALUE {v}" for v in keys.values()]


def test_kvstore_v1_to_v2_to_v3_with_10000_keys() -> None:
    keys = {f"key{i}": f"value number {i}" for i in range(10_000)}
    with start_server(fixture_binary("kvstore", "v1")) as server:
        loader, idle = KvClient(server.port), KvClient(server.port)
        assert set(loader.pipeline([f"SET {k} {v}" for k, v in keys.items()])) == {"OK"}
        loader.mode("readonly")
        fds = fd_table(server.pid)
        context = process_context(server.pid)

        attach(
            server.pid, fixture_binary("kvstore", "v2"), "--xform", str(XFORMS / "xform_v1_v2.py")
        )
        all_keys_read_back(loader, keys)
        stats = idle.stats()
        assert (stats["version"], stats["mode"], stats["clients"]) == (2, "readonly", 2)
        assert stats["max_key_len"] == 64  # v2's initial value for a field v1 lacks
        assert idle.count() == len(keys)  # the renamed field, by the transformer
        assert idle.hits("key7") == 1  # 0 from the update (v1 has no hits), +1 read back
        idle.get("key7")
        assert idle.hits("key7") == 2
        assert fd_table(server.pid) == fds

        attach(
            server.pid, fixture_binary("kvstore", "v3"), "--xform", str(XFORMS / "xform_v2_v3.py")
        )
        all_keys_read_back(idle, keys)
        stats = loader.stats()
        assert (stats["version"], stats["buckets"], stats["mode"]) == (3, 256, "readonly")
        assert loader.hits("key7") == 3  # carried onto the rehashed entry, +1 read back
        assert loader.count() == len(keys)
        assert fd_table(server.pid) == fds
        assert process_context(server.pid) == context
        assert os.path.realpath(f"/proc/{server.pid}/exe") == str(fixture_binary("kvstore", "v3"))
        assert server.alive()


def test_kvstore_v3_to_v1_downgrade() -> None:
    keys = {f"k{i}": f"v{i}" for i in range(2_000)}
    with start_server(fixture_binary("kvstore", "v3")) as server, KvClient(server.port) as client:
        client.pipeline([f"SET {k} {v}" for k, v in keys.items()])
        attach(
            server.pid, fixture_binary("kvstore", "v1"), "--xform", str(XFORMS / "xform_v3_v1.py")
        )
        all_keys_read_back(client, keys)
        assert client.stats()["version"] == 1
        assert client.count() == len(keys)
        client.set("fresh", "key")  # v1's own insert works on the rebuilt table
        assert client.get("fresh") == "key"


def test_args_replace_the_old_argv() -> None:
    with start_server(fixture_binary("counter", "v1")) as server:
        new = fixture_binary("counter", "v2")
        # The port argument is only read when listen_fd is not carried over.
        attach(server.pid, new, "--args", "0")
        argv = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert argv[1:] == [b"0"]
        with CounterClient(server.port) as client:
            assert client.send("hi") == "v2 #1 echo: hi"


def test_rollback_restores_the_old_argv() -> None:
    with start_server(fixture_binary("counter", "v1")) as server, CounterClient(server.port) as c:
        assert c.send("one") == "v1 #1 echo: one"
        before = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        new = str(fixture_binary("counter", "v2"))
        result = run_tool("attach", str(server.pid), "--new", new, "--args", "too", "many")
        assert result.returncode == 11 and "called exit(2)" in result.stderr, result.stderr
        assert Path(f"/proc/{server.pid}/cmdline").read_bytes() == before
        assert c.send("two") == "v1 #1 echo: two"


def test_report_text_lists_phases_and_pause() -> None:
    with start_server(fixture_binary("counter", "v1")) as server:
        result = run_tool("attach", str(server.pid), "--new", str(fixture_binary("counter", "v2")))
        assert result.returncode == 0, result.stderr
        assert "updated" in result.stdout and "pause:" in result.stdout
        assert "initialised by the new version: main:nlines" in result.stdout
        with CounterClient(server.port) as client:
            assert client.send("hi") == "v2 #1 echo: hi"


@pytest.mark.parametrize(
    ("new", "xform", "words"),
    [
        (("faulty", "v2-crash"), None, "crashed with SIGSEGV"),
        (("faulty", "v2-exit"), None, "called exit(3)"),
        (("faulty", "v2-hang"), None, "did not reach an update point"),
        (("kvstore", "v2"), "raising", "raised ZeroDivisionError"),
    ],
)
def test_failure_after_exec_rolls_back(
    new: tuple[str, str], xform: str | None, words: str, tmp_path: Path
) -> None:
    args = ["--timeout", "2", "--allow-drop"]  # v1 -> v2 drops state; not what is tested here
    if xform == "raising":
        script = tmp_path / "raising.py"
        script.write_text(
            "from ekiden_trace.xform import variable\n\n"
            "@variable('nclients')\n"
            "def broken(old, ctx):\n"
            "    return 1 // 0\n"
        )
        args += ["--xform", str(script)]
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.pipeline([f"SET k{i} v{i}" for i in range(500)])
        cpus = os.sched_getaffinity(server.pid)
        result = run_tool("attach", str(server.pid), "--new", str(fixture_binary(*new)), *args)
        assert result.returncode == 11, result.stderr
        assert os.sched_getaffinity(server.pid) == cpus
        assert "rolled back" in result.stderr and words in result.stderr
        if xform == "raising":  # the user sees the transformer's own traceback
            assert "raising.py" in result.stderr and "return 1 // 0" in result.stderr
        assert server.alive()
        stats = client.stats()
        assert stats["version"] == 1 and stats["clients"] == 1
        assert client.count() == 500
        assert client.get("k499") == "v499"


# "restore-write!" fails as a bug would (a RuntimeError): any exception after the exec
# rolls back, not only the tool's own errors.
@pytest.mark.parametrize("fault", ["restore-write", "restore-write!"])
def test_failed_state_write_rolls_back(fault: str) -> None:
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.set("a", "b")
        env = {"EKIDEN_TRACE_FAULT": fault}
        new = str(fixture_binary("kvstore", "v2"))
        xform = str(XFORMS / "xform_v1_v2.py")
        result = run_tool("attach", str(server.pid), "--new", new, "--xform", xform, env=env)
        assert result.returncode == 11, result.stderr
        assert "rolled back" in result.stderr and "Traceback" not in result.stderr
        assert client.get("a") == "b"
        assert client.stats()["version"] == 1
        assert tracer_of(server.pid) == 0 and process_state(server.pid) in "SR"


def expect_refusal(args: list[str], code: int, words: str) -> str:
    """Run a refused command; return the one sentence it printed first."""
    result = run_tool(*args)
    assert result.returncode == code, (result.returncode, result.stderr)
    first = result.stderr.splitlines()[0]
    assert first.startswith("ekiden-trace: ") and words in first, result.stderr
    assert "ekiden_trace/" not in result.stderr, "no traceback of the tool itself"
    return result.stderr


@pytest.fixture
def kv_v1():
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.set("kept", "yes")
        yield server, client
        assert client.get("kept") == "yes"
        assert client.stats()["version"] == 1


def test_unmarked_new_binary_is_refused(kv_v1) -> None:
    server, _ = kv_v1
    expect_refusal(["attach", str(server.pid), "--new", "/bin/true"], 2, "has no ekiden marks")


def test_xform_that_does_not_import_is_refused(kv_v1, tmp_path: Path) -> None:
    server, _ = kv_v1
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module\n")
    new = str(fixture_binary("kvstore", "v2"))
    stderr = expect_refusal(
        ["attach", str(server.pid), "--new", new, "--xform", str(broken)], 7, "does not import"
    )
    assert "broken.py" in stderr and "import no_such_module" in stderr  # the user's traceback
