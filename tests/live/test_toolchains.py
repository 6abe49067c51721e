"""Other toolchains: the fixtures built by clang as well as gcc, at -O0 to -O3, update
with their state as the Makefile's gcc -O2 builds do, and build without a warning.

What clang does differently, and these tests cover:
- a function static of a function inlined everywhere (kvstore's `served` in
  count_served) sits under a bare DW_TAG_subprogram;
- from -O1 on, a tagged local of main (counter's listen_fd, client_fd,
  nclients) has a location list that names its stack slot only over the tag's
  slow path, and a register (lost in a caller's frame) elsewhere: the tool
  reads the slot, at its fixed distance from the CFA.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from clients import CounterClient, KvClient, build_fixture, start_server
from conftest import REPO, needs_ptrace, run_tool

pytestmark = needs_ptrace

COMPILERS = ["gcc", "clang"]
LEVELS = ["-O0", "-O1", "-O2", "-O3"]


def built(tmp_path: Path, compiler: str, level: str, fixture: str, *versions: str) -> list[Path]:
    """The fixture's versions built by compiler at level, warning-free."""
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed (`make test` installs Debian's clang)")
    binaries = []
    for version in versions:
        out = tmp_path / f"{fixture}-{version}"
        result = build_fixture(fixture, version, out, level, compiler=compiler)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        binaries.append(out)
    return binaries


def attach(pid: int, new: Path, *extra: str) -> dict:
    result = run_tool("attach", str(pid), "--new", str(new), "--json", *extra)
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("compiler", COMPILERS)
def test_kvstore_update_keeps_keys_and_the_served_count(
    compiler: str, level: str, tmp_path: Path
) -> None:
    v1, v2 = built(tmp_path, compiler, level, "kvstore", "v1", "v2")
    with start_server(v1) as server:
        client = KvClient(server.port)
        assert client.set("alpha", "one") == "OK" and client.set("beta", "two") == "OK"
        served = client.stats()["served"]
        report = attach(server.pid, v2, "--xform", str(REPO / "fixtures/kvstore/xform_v1_v2.py"))
        assert "count_served:served" in report["moved"]
        assert client.get("alpha") == "one" and client.get("beta") == "two"
        assert client.hits("alpha") == 1  # v2's HITS, with v1's entries
        assert client.stats()["served"] == served + 4  # STATS, 2 GETs, HITS, this STATS
        client.close()


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("compiler", COMPILERS)
def test_counter_update_keeps_the_connected_client(
    compiler: str, level: str, tmp_path: Path
) -> None:
    v1, v2 = built(tmp_path, compiler, level, "counter", "v1", "v2")
    with start_server(v1) as server:
        client = CounterClient(server.port)
        assert client.send("one") == "v1 #1 echo: one"
        report = attach(server.pid, v2)
        assert "handle_client:in" in report["moved"] and "main:nclients" in report["moved"]
        assert client.send("two") == "v2 #1 echo: two"
        assert client.send("LINES") == "lines 2"
        client.close()
