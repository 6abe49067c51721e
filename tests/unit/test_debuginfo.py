"""Debug info where distributions put it: stripped binaries whose DWARF is in a separate
file found by build-id, by .gnu_debuglink or from a debuginfod server."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from clients import fixture_binary
from conftest import run_tool
from distro import PLACES, build_id, debuginfod, distro_build, place_debug

from ekiden_trace.binary.program import Program
from ekiden_trace.state.control import STOP_FUNCTION
from ekiden_trace.target.images import file_gadget


@pytest.fixture
def world(tmp_path: Path) -> dict[str, str]:
    """An environment with its own (empty) cache and debug directory, and no debuginfod."""
    (tmp_path / "debug").mkdir()
    return {
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "EKIDEN_DEBUG_DIRS": str(tmp_path / "debug"),
        "DEBUGINFOD_URLS": "",
    }


def points(binary: Path, env: dict[str, str]) -> dict:
    result = run_tool("points", str(binary), "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    del data["binary"]
    return data


@pytest.mark.parametrize("strip", ["--strip-all", "--strip-debug", "--strip-unneeded"])
def test_marks_survive_strip(strip: str, tmp_path: Path, world: dict[str, str]) -> None:
    binary = fixture_binary("counter", "v1")
    installed = tmp_path / "usr" / "sbin" / "counterd"
    debug = distro_build(binary, installed, strip)
    listed = subprocess.run(["readelf", "-n", str(installed)], capture_output=True, text=True)
    assert "stapsdt" in listed.stdout and "ekiden" in listed.stdout
    place_debug(debug, "build-id", installed, Path(world["EKIDEN_DEBUG_DIRS"]))
    assert points(installed, world) == points(binary, world)


@pytest.mark.parametrize("place", PLACES)
def test_debug_file_found_where_debuggers_look(
    place: str, tmp_path: Path, world: dict[str, str]
) -> None:
    installed = tmp_path / "usr" / "sbin" / "counterd"
    debug = distro_build(fixture_binary("counter", "v1"), installed)
    stripped = run_tool("points", str(installed), env=world)
    assert stripped.returncode == 2 and "is stripped" in stripped.stderr
    place_debug(debug, place, installed, Path(world["EKIDEN_DEBUG_DIRS"]))
    assert points(installed, world) == points(fixture_binary("counter", "v1"), world)


def test_debuginfod_server(tmp_path: Path, world: dict[str, str]) -> None:
    installed = tmp_path / "usr" / "sbin" / "counterd"
    debug = distro_build(fixture_binary("counter", "v1"), installed)
    ident = build_id(installed)
    with debuginfod({ident: debug}) as (url, asked):
        env = {**world, "DEBUGINFOD_URLS": f"{url}/missing {url}"}
        assert points(installed, env) == points(fixture_binary("counter", "v1"), world)
        assert asked == [f"/missing/buildid/{ident}/debuginfo", f"/buildid/{ident}/debuginfo"]
        points(installed, env)  # the second time from the cache
        assert len(asked) == 2


def test_debug_file_kept_after_its_package_is_upgraded(
    tmp_path: Path, world: dict[str, str]
) -> None:
    installed = tmp_path / "usr" / "sbin" / "counterd"
    debug = distro_build(fixture_binary("counter", "v1"), installed)
    placed = place_debug(debug, "build-id", installed, Path(world["EKIDEN_DEBUG_DIRS"]))
    expected = points(installed, world)
    placed.unlink()  # apt upgrade of counterd-dbgsym removes v1's debug file
    assert points(installed, world) == expected


def test_diff_of_two_stripped_versions(tmp_path: Path, world: dict[str, str]) -> None:
    debug_dir = Path(world["EKIDEN_DEBUG_DIRS"])
    builds = []
    for version in ("v1", "v2"):
        installed = tmp_path / version / "usr" / "sbin" / "counterd"
        debug = distro_build(fixture_binary("counter", version), installed)
        place_debug(debug, "build-id", installed, debug_dir)
        builds.append(str(installed))
    result = run_tool("diff", *builds, "--json", env=world)
    assert result.returncode == 0, result.stderr
    plain = run_tool("diff", *(str(fixture_binary("counter", v)) for v in ("v1", "v2")), "--json")
    ours, theirs = json.loads(result.stdout), json.loads(plain.stdout)
    for report in (ours, theirs):
        del report["old"], report["new"]
    assert ours == theirs


def test_mismatched_debug_files_are_not_used(tmp_path: Path, world: dict[str, str]) -> None:
    """v2's debug file under v1's build-id, and a debuglink file whose CRC differs."""
    installed = tmp_path / "usr" / "sbin" / "counterd"
    distro_build(fixture_binary("counter", "v1"), installed)
    other = distro_build(fixture_binary("counter", "v2"), tmp_path / "x" / "y" / "counterd")
    ident = build_id(installed)
    wrong = Path(world["EKIDEN_DEBUG_DIRS"]) / ".build-id" / ident[:2] / f"{ident[2:]}.debug"
    wrong.parent.mkdir(parents=True)
    shutil.copy(other, wrong)
    shutil.copy(other, installed.parent / "counterd.debug")  # the name the debuglink gives
    result = run_tool("points", str(installed), env=world)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(wrong) in result.stderr and str(installed.parent / "counterd.debug") in result.stderr


def test_no_debug_info_anywhere_names_places_and_package(
    tmp_path: Path, world: dict[str, str]
) -> None:
    installed = tmp_path / "usr" / "sbin" / "counterd"
    distro_build(fixture_binary("counter", "v1"), installed)
    result = run_tool("points", str(installed), env=world)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert message.count("\n") == 0
    ident = build_id(installed)
    for place in (
        f"{world['EKIDEN_DEBUG_DIRS']}/.build-id/{ident[:2]}/{ident[2:]}.debug",
        f"{installed.parent}/counterd.debug",
        f"{installed.parent}/.debug/counterd.debug",
        f"{world['EKIDEN_DEBUG_DIRS']}{installed.parent}/counterd.debug",
    ):
        assert place in message
    assert "counterd-dbgsym" in message and "DEBUGINFOD_URLS" in message


def test_stripped_program_names_its_functions_from_its_debug_file(
    tmp_path: Path, world: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Static functions (the marks' slow path, whose `syscall` an update injects through
    during the pause, and targets of function pointers) come from the debug file."""
    for name, value in world.items():
        monkeypatch.setenv(name, value)
    installed = tmp_path / "usr" / "sbin" / "counterd"
    debug = distro_build(fixture_binary("counter", "v1"), installed)
    place_debug(debug, "dot-debug", installed, Path(world["EKIDEN_DEBUG_DIRS"]))
    program = Program(installed)
    assert program.debug_path == str(installed.parent / ".debug" / "counterd.debug")
    assert "die" in program.symbols.by_name  # a static function
    assert file_gadget(str(installed), STOP_FUNCTION, program.debug_path) is not None
