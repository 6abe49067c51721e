"""A union holding a pointer with no discriminant field is never copied as bytes.

The program keeps a `struct job` whose union `u` holds either a callback or a data
pointer; nothing in the struct says which (the programmer knows it is always `fn`).
v2 moves its handler (it has another function before it), so v1's code address would
be stale in v2.  Unexplained, `diff` and `attach` refuse the update before touching
the process, naming the field; with EKIDEN_HINT_UNION_MEMBER in C, or union_member()
in a transformer file, the callback is carried by symbol and v2 calls its own handler.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from conftest import compile_marked, needs_ptrace, run_tool

SOURCE = textwrap.dedent(
    """\
    #include <errno.h>
    #include <stdio.h>
    #include <unistd.h>
    #include "ekiden.h"

    struct job {
        int runs;
        union {
            void (*fn)(int *);
            void *data;
        } u;
    };
    HINT

    #if VERSION == 2
    void unused(int *runs) { *runs -= 100; } /* moves handler to another address */
    #endif
    void handler(int *runs) { *runs += VERSION; }

    struct job job;

    int main(void)
    {
        char line[64];

        if (EKIDEN_TAG(job))
            job.u.fn = handler;
        for (;;) {
            EKIDEN_UPDATE_POINT(loop);
            ssize_t n = read(0, line, sizeof line);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                return 0;
            job.u.fn(&job.runs);
            printf("v%d runs=%d\\n", VERSION, job.runs);
            fflush(stdout);
        }
    }
    """
)
HINT = "EKIDEN_HINT_UNION_MEMBER(struct job, u, fn);"


def build(folder: Path, version: int, hint: str) -> Path:
    source = folder / f"job{version}.c"
    source.write_text(SOURCE.replace("HINT", hint))
    return compile_marked(source, folder / f"job-v{version}", "-g", "-O2", f"-DVERSION={version}")


def ask(proc: subprocess.Popen[str]) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("x\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def update(tmp_path: Path, hint: str, *xform: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Update v1 (after two runs of its handler) to v2; the result and v2's next answer."""
    v1, v2 = build(tmp_path, 1, hint), build(tmp_path, 2, hint)
    proc = subprocess.Popen([str(v1)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert ask(proc) == "v1 runs=1"
        assert ask(proc) == "v1 runs=2"
        result = run_tool("attach", str(proc.pid), "--new", str(v2), *xform)
        return result, ask(proc)
    finally:
        proc.kill()
        proc.wait()


def test_diff_names_the_unexplained_union(tmp_path: Path) -> None:
    v1, v2 = build(tmp_path, 1, ""), build(tmp_path, 2, "")
    result = run_tool("diff", str(v1), str(v2))
    assert result.returncode == 10, result.stdout + result.stderr
    assert "job.u: union {...} holds a pointer (fn, data)" in result.stdout
    assert "EKIDEN_HINT_UNION_MEMBER" in result.stdout
    assert run_tool("diff", str(build(tmp_path, 1, HINT)), str(v2)).returncode == 0


@needs_ptrace
def test_unexplained_union_is_refused_and_v1_runs_on(tmp_path: Path) -> None:
    result, answer = update(tmp_path, "")
    assert result.returncode == 10, result.stderr
    assert "Traceback" not in result.stderr
    assert "job.u: union {...} holds a pointer" in result.stderr
    assert answer == "v1 runs=3"


@needs_ptrace
def test_union_member_hint_carries_the_callback_by_symbol(tmp_path: Path) -> None:
    result, answer = update(tmp_path, HINT)
    assert result.returncode == 0, result.stderr
    assert answer == "v2 runs=4"  # v2's own handler, not v1's address


@needs_ptrace
def test_union_member_in_a_transformer_file(tmp_path: Path) -> None:
    xform = tmp_path / "xform.py"
    xform.write_text(
        'from ekiden_trace.xform import union_member\n\nunion_member("struct job", "u", "fn")\n'
    )
    result, answer = update(tmp_path, "", "--xform", str(xform))
    assert result.returncode == 0, result.stderr
    assert answer == "v2 runs=4"


def test_union_member_naming_nothing_is_an_error(tmp_path: Path) -> None:
    v1, v2 = build(tmp_path, 1, ""), build(tmp_path, 2, "")
    xform = tmp_path / "xform.py"
    xform.write_text(
        'from ekiden_trace.xform import union_member\n\nunion_member("struct job", "u", "cb")\n'
    )
    result = run_tool("diff", str(v1), str(v2), "--xform", str(xform))
    assert result.returncode == 7 and "Traceback" not in result.stderr
    assert "needs a union field u with a member cb" in result.stderr


@needs_ptrace
def test_union_behind_a_hinted_void_pointer_is_refused_by_the_plan(tmp_path: Path) -> None:
    """The plan follows a `void *` hinted to a struct job on the heap: `diff` reports the
    union in it with its path, and `attach` refuses it before touching v1, which runs on."""
    behind = (
        SOURCE.replace("HINT", "")
        .replace(
            "struct job job;",
            "struct job job;\n"
            "struct holder { void *p; };\n"
            "EKIDEN_HINT_POINTS_TO(struct holder, p, struct job);\n"
            "struct holder holder;",
        )
        .replace(
            "if (EKIDEN_TAG(job))",
            "holder.p = calloc(1, sizeof(struct job));\n"
            "    ((struct job *)holder.p)->u.fn = handler;\n"
            "    (void)EKIDEN_TAG(holder);\n    ",
        )
        .replace("#include <errno.h>", "#include <errno.h>\n#include <stdlib.h>")
    )
    source = tmp_path / "behind.c"
    source.write_text(behind)
    v1 = compile_marked(source, tmp_path / "behind-v1", "-g", "-O2", "-DVERSION=1")
    planned = run_tool("diff", str(v1), str(v1))
    assert planned.returncode == 10, planned.stderr + planned.stdout
    assert "holder.p*.u: union {...} holds a pointer (fn, data)" in planned.stdout
    proc = subprocess.Popen([str(v1)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert ask(proc) == "v1 runs=1"
        result = run_tool("attach", str(proc.pid), "--new", str(v1))
        assert result.returncode == 10, result.stderr
        assert "Traceback" not in result.stderr
        assert "holder.p*.u: union {...} holds a pointer (fn, data)" in result.stderr
        assert ask(proc) == "v1 runs=2"
    finally:
        proc.kill()
        proc.wait()
