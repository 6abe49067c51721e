"""Tagged locals of the same name in two active functions each get their own value back."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from conftest import compile_marked, needs_ptrace, run_tool

pytestmark = needs_ptrace

# main and serve both have a tagged local `count`; serve, called by main, holds the
# update point.  Each line read from stdin adds 10 to main's count and 1 to serve's.
SOURCE = textwrap.dedent(
    """\
    #include <errno.h>
    #include <stdio.h>
    #include <unistd.h>
    #include "ekiden.h"

    static void serve(int *outer)
    {
        int count;
        char line[64];

        if (EKIDEN_TAG(count))
            count = 100;
        for (;;) {
            EKIDEN_UPDATE_POINT(serve_loop);
            ssize_t n = read(0, line, sizeof line);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                return;
            *outer += 10;
            count++;
            printf("v%d main=%d serve=%d\\n", VERSION, *outer, count);
            fflush(stdout);
        }
    }

    int main(void)
    {
        int count;

        if (EKIDEN_TAG(count))
            count = 7;
        serve(&count);
        return 0;
    }
    """
)


def build(tmp_path: Path, version: int) -> Path:
    source = tmp_path / "twins.c"
    source.write_text(SOURCE)
    return compile_marked(
        source, tmp_path / f"twins-v{version}", "-g", "-O2", f"-DVERSION={version}"
    )


def ask(proc: subprocess.Popen[str]) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("next\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def test_same_named_locals_of_two_functions(tmp_path: Path) -> None:
    v1, v2 = build(tmp_path, 1), build(tmp_path, 2)
    proc = subprocess.Popen([str(v1)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert ask(proc) == "v1 main=17 serve=101"
        assert ask(proc) == "v1 main=27 serve=102"
        result = run_tool("attach", str(proc.pid), "--new", str(v2))
        assert result.returncode == 0, result.stderr
        assert ask(proc) == "v2 main=37 serve=103"
    finally:
        proc.kill()
        proc.wait()
