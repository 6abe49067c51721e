"""`ekiden-trace points`: the marks of a binary, checked against its source and readelf."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from clients import fixture_binary
from conftest import run_tool, tool_json


def source_lines(source: Path, pattern: str) -> dict[str, int]:
    """{name: line} for every `MARK(name)` of a source file."""
    found = {}
    for number, line in enumerate(source.read_text().splitlines(), 1):
        for name in re.findall(pattern, line):
            found.setdefault(name, number)
    return found


def readelf_probes(binary: Path) -> set[tuple[str, int]]:
    """(name, address) of every probe of provider ekiden, as GNU readelf shows them."""
    out = subprocess.run(["readelf", "-n", str(binary)], capture_output=True, text=True).stdout
    probes = set()
    for block in out.split("Provider: ")[1:]:
        provider = block.split()[0]
        name = re.search(r"Name: (\S+)", block).group(1)
        location = int(re.search(r"Location: (0x[0-9a-f]+)", block).group(1), 16)
        if provider == "ekiden":
            probes.add((name, location))
    return probes


@pytest.mark.parametrize("fixture", ["counter", "kvstore"])
def test_points_match_source_and_readelf(fixture: str) -> None:
    binary = fixture_binary(fixture, "v1")
    source = binary.with_suffix(".c")
    data = tool_json("points", str(binary))

    declared = source_lines(source, r"EKIDEN_UPDATE_POINT\((\w+)\)")
    assert {p["name"]: p["line"] for p in data["points"]} == declared
    assert all(Path(p["file"]).name == source.name for p in data["points"])
    listed = {(p["name"], int(p["address"], 16)) for p in data["points"]}
    assert listed == readelf_probes(binary)

    tagged = source_lines(source, r"EKIDEN_TAG\((\w+)\)")
    assert {t["name"] for t in data["tags"]} == set(tagged)


def tags_by_name(binary: Path) -> dict[str, dict]:
    return {t["name"]: t for t in tool_json("points", str(binary))["tags"]}


def test_counter_tags_are_locals_of_their_functions() -> None:
    tags = tags_by_name(fixture_binary("counter", "v1"))
    for name in ("nclients", "listen_fd", "client_fd"):
        assert (tags[name]["scope"], tags[name]["function"], tags[name]["type"]) == (
            "local",
            "main",
            "int",
        )
        assert tags[name]["size"] == 4
    assert tags["in"]["scope"] == "local"
    assert tags["in"]["function"] == "handle_client"
    assert tags["in"]["type"] == "struct pending"


def test_kvstore_tags_have_every_scope_and_c_types() -> None:
    tags = tags_by_name(fixture_binary("kvstore", "v1"))
    expected = {
        "table": ("global", "struct table *", 8),
        "config": ("global", "struct server_config", None),
        "client_fds": ("global", "int [64]", 256),
        "nclients": ("global", "int", 4),
        "inbufs": ("file_static", "struct inbuf [64]", None),
        "listen_fd": ("file_static", "int", 4),
        "served": ("function_static", "unsigned long", 8),
    }
    for name, (scope, ctype, size) in expected.items():
        assert (tags[name]["scope"], tags[name]["type"]) == (scope, ctype), name
        if size is not None:
            assert tags[name]["size"] == size
    assert tags["served"]["function"] == "count_served"


def test_kvstore_hints_are_listed() -> None:
    data = tool_json("points", str(fixture_binary("kvstore", "v1")))
    hints = {(h["subject"], h["hint"]) for h in data["hints"]}
    assert ("struct table.buckets", "array of nbuckets") in hints
    assert ("struct server_config.endpoint", "member port when kind == ENDPOINT_TCP") in hints


def test_points_text_view() -> None:
    result = run_tool("points", str(fixture_binary("counter", "v1")))
    assert result.returncode == 0, result.stderr
    assert "con_loop" in result.stdout and "cl_loop" in result.stdout
    assert "local of main" in result.stdout


def test_second_run_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    binary = str(fixture_binary("kvstore", "v1"))
    first = run_tool("points", "--json", binary)
    cached = list((tmp_path / "ekiden-trace").iterdir())
    second = run_tool("points", "--json", binary)
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout
    assert cached and all(p.stat().st_mode & 0o777 == 0o600 for p in cached)
    assert (tmp_path / "ekiden-trace").stat().st_mode & 0o777 == 0o700


def expect_refusal(args: list[str], code: int, words: str) -> None:
    result = run_tool(*args)
    assert result.returncode == code, (result.returncode, result.stderr)
    message = result.stderr.strip()
    assert message.startswith("ekiden-trace: ") and message.count("\n") == 0, message
    assert words in message
    assert "Traceback" not in result.stderr


def test_binary_without_marks_is_refused() -> None:
    expect_refusal(["points", shutil.which("true")], 2, "has no ekiden marks")


def test_stripped_binary_is_refused(tmp_path: Path) -> None:
    stripped = tmp_path / "kvstore-stripped"
    shutil.copy(fixture_binary("kvstore", "v1"), stripped)
    subprocess.run(["strip", str(stripped)], check=True)
    expect_refusal(["points", str(stripped)], 2, "is stripped")


def test_non_elf_file_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "server.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    expect_refusal(["points", str(script)], 2, "is not an ELF file")


def test_missing_binary_is_refused(tmp_path: Path) -> None:
    expect_refusal(["points", str(tmp_path / "nope")], 2, "does not exist")


def test_points_agree_with_gdb_info_probes() -> None:
    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed (make setup installs it)")
    binary = fixture_binary("counter", "v1")
    out = subprocess.run(
        ["gdb", "-nx", "-batch", "-ex", "info probes", str(binary)], capture_output=True, text=True
    ).stdout
    gdb_probes = {
        (fields[2], int(fields[3], 16))
        for fields in (line.split() for line in out.splitlines())
        if len(fields) >= 4 and fields[:2] == ["stap", "ekiden"]
    }
    data = tool_json("points", str(binary))
    assert gdb_probes == {(p["name"], int(p["address"], 16)) for p in data["points"]}


def test_cflags_finds_the_header(tmp_path: Path) -> None:
    result = run_tool("cflags")
    assert result.returncode == 0
    flags = result.stdout.split()
    source = tmp_path / "marked.c"
    source.write_text(
        '#include "ekiden.h"\nint main(void) { int n; if (EKIDEN_TAG(n)) n = 0;'
        " EKIDEN_UPDATE_POINT(top); return n; }\n"
    )
    subprocess.run(["gcc", *flags, "-g", str(source), "-o", str(tmp_path / "marked")], check=True)
    names = [p["name"] for p in tool_json("points", str(tmp_path / "marked"))["points"]]
    assert names == ["top"]
