"""Installing the tool like a user: a wheel built from the repository, in a fresh venv,
gives the `ekiden-trace` command, the header and a pkg-config file that compile a marked
program the installed tool then reads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PROGRAM = """
#include <ekiden.h>
int counter;
int main(void)
{
    if (EKIDEN_TAG(counter))
        counter = 0;
    for (;;) {
        EKIDEN_UPDATE_POINT(main_loop);
        counter++;
    }
}
"""


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> str:
    """Run a command; its stdout, failing the test with its output if it fails."""
    result = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, f"{cmd}: {result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from a copy of the repository's tracked files."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    for name in run("git", "-C", REPO, "ls-files").split():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "dist", source)
    (wheel,) = (tmp / "dist").glob("ekiden_trace-*.whl")
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "-q", wheel)
    return venv


def test_the_wheel_gives_the_command_the_header_and_pkg_config(
    installed: Path, tmp_path: Path
) -> None:
    include = installed / "include" / "ekiden"
    assert run(installed / "bin" / "ekiden-trace", "cflags").split() == [f"-I{include}"]
    assert (include / "ekiden.h").read_bytes() == (REPO / "probes" / "ekiden.h").read_bytes()

    pkg_env = {"PKG_CONFIG_PATH": str(installed / "share" / "pkgconfig")}
    cflags = run("pkg-config", "--cflags", "ekiden", env=pkg_env).split()
    assert [Path(flag[2:]).resolve() for flag in cflags] == [include.resolve()]
    version = run(
        installed / "bin" / "python",
        "-c",
        "import importlib.metadata as m; print(m.version('ekiden-trace'))",
    )
    assert run("pkg-config", "--modversion", "ekiden", env=pkg_env) == version

    (tmp_path / "marked.c").write_text(PROGRAM)
    binary = tmp_path / "marked"
    run("gcc", *cflags, "-g", "-O2", tmp_path / "marked.c", "-o", binary)
    points = run(installed / "bin" / "ekiden-trace", "points", binary)
    assert "main_loop" in points and "counter" in points
