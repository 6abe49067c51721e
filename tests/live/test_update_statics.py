"""Same-named function statics of two compilation units keep their own identity.

tickets_a.c and tickets_b.c each have a file-local `ticket()` with a tagged
`static int n` (a starts at 100, b at 200); main asks either for the next ticket.
Their keys name the unit (`tickets_a.c:ticket:n`), so both are listed, both are
planned, and both arrive in v2 with their own values.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from conftest import compile_marked, needs_ptrace, run_tool, tool_json

TICKETS = textwrap.dedent(
    """\
    #include "ekiden.h"

    static int ticket(int bump)
    {
        static int n = START;

        (void)EKIDEN_TAG(n);
        n += bump;
        return n;
    }

    int ticket_UNIT(int bump) { return ticket(bump); }
    """
)

MAIN = textwrap.dedent(
    """\
    #include <errno.h>
    #include <stdio.h>
    #include <unistd.h>
    #include "ekiden.h"

    int ticket_a(int bump);
    int ticket_b(int bump);

    int main(void)
    {
        char line[64];

        ticket_a(0); /* run both tags at start-up */
        ticket_b(0);
        for (;;) {
            EKIDEN_UPDATE_POINT(loop);
            ssize_t n = read(0, line, sizeof line);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                return 0;
            int a = ticket_a(line[0] == 'a'), b = ticket_b(line[0] == 'b');
            printf("v%d a=%d b=%d\\n", VERSION, a, b);
            fflush(stdout);
        }
    }
    """
)


def build(folder: Path, version: int) -> Path:
    sources = []
    for unit, start in (("a", 100), ("b", 200)):
        source = folder / f"tickets_{unit}.c"
        source.write_text(TICKETS.replace("UNIT", unit).replace("START", str(start)))
        sources.append(str(source))
    main = folder / "main.c"
    main.write_text(MAIN)
    flags = ["-g", "-O2", f"-DVERSION={version}", *sources]
    return compile_marked(main, folder / f"tickets-v{version}", *flags)


def ask(proc: subprocess.Popen[str], line: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def test_points_and_diff_list_both_statics(tmp_path: Path) -> None:
    v1 = build(tmp_path, 1)
    keys = sorted(t["key"] for t in tool_json("points", str(v1))["tags"])
    assert keys == [f"{tmp_path}/tickets_a.c:ticket:n", f"{tmp_path}/tickets_b.c:ticket:n"]
    plan = tool_json("diff", str(v1), str(v1))
    assert sorted(v["key"] for v in plan["variables"] if v["action"] == "transfer") == keys


@needs_ptrace
def test_both_statics_keep_their_values(tmp_path: Path) -> None:
    v1, v2 = build(tmp_path, 1), build(tmp_path, 2)
    proc = subprocess.Popen([str(v1)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert ask(proc, "a") == "v1 a=101 b=200"
        assert ask(proc, "b") == "v1 a=101 b=201"
        assert ask(proc, "b") == "v1 a=101 b=202"
        result = run_tool("attach", str(proc.pid), "--new", str(v2))
        assert result.returncode == 0, result.stderr
        assert ask(proc, "a") == "v2 a=102 b=202"
    finally:
        proc.kill()
        proc.wait()


# Two units each define a file static `counter` (a starts at 100, b at 200); main holds
# a pointer to each and bumps them through it.  A pointer to a static is remapped to the
# same static of v2 by (unit, name): the ELF's FILE symbols say which unit each is from.
COUNTER = textwrap.dedent(
    """\
    #include "ekiden.h"

    static int counter = START;

    int *counter_UNIT(void)
    {
        (void)EKIDEN_TAG(counter);
        return &counter;
    }
    """
)

POINTERS = textwrap.dedent(
    """\
    #include <errno.h>
    #include <stdio.h>
    #include <unistd.h>
    #include "ekiden.h"

    int *counter_a(void);
    int *counter_b(void);
    int *ptrs[2];

    int main(void)
    {
        char line[64];
        int *a = counter_a(), *b = counter_b(); /* run both tags at start-up */

        if (EKIDEN_TAG(ptrs)) {
            ptrs[0] = a;
            ptrs[1] = b;
        }
        for (;;) {
            EKIDEN_UPDATE_POINT(loop);
            ssize_t n = read(0, line, sizeof line);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                return 0;
            *ptrs[line[0] == 'b'] += 1;
            printf("v%d a=%d b=%d\\n", VERSION, *ptrs[0], *ptrs[1]);
            fflush(stdout);
        }
    }
    """
)


def build_pointers(folder: Path, version: int) -> Path:
    sources = []
    # v2 links the units in the other order, so the two counters swap addresses
    units = (("a", 100), ("b", 200)) if version == 1 else (("b", 200), ("a", 100))
    for unit, start in units:
        source = folder / f"counter_{unit}.c"
        source.write_text(COUNTER.replace("UNIT", unit).replace("START", str(start)))
        sources.append(str(source))
    main = folder / "pointers.c"
    main.write_text(POINTERS)
    flags = ["-g", "-O2", f"-DVERSION={version}", *sources]
    return compile_marked(main, folder / f"pointers-v{version}", *flags)


@needs_ptrace
def test_pointers_to_same_named_statics_keep_their_unit(tmp_path: Path) -> None:
    v1, v2 = build_pointers(tmp_path, 1), build_pointers(tmp_path, 2)
    proc = subprocess.Popen([str(v1)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert ask(proc, "a") == "v1 a=101 b=200"
        assert ask(proc, "b") == "v1 a=101 b=201"
        result = run_tool("attach", str(proc.pid), "--new", str(v2))
        assert result.returncode == 0, result.stderr
        assert ask(proc, "b") == "v2 a=101 b=202"
        state = tool_json("inspect", str(proc.pid))
        ptrs = next(v["value"] for v in state["variables"] if v["name"] == "ptrs")
        assert [p["global"] for p in ptrs] == ["counter_a.c:counter", "counter_b.c:counter"]
    finally:
        proc.kill()
        proc.wait()
