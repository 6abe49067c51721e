"""What a transformer receives and returns has the shapes the README promises.

The program (v1 and v2 built from one source, VERSION set by -D) counts requests
in `hits`, keeps a `struct note` whose fields are named like View's helpers
(`text`, `raw`, `bytes`), and a `struct bag` of `nitems` ints on the heap.  v2's
start-up sets `hits` to 1000 before its tag.  The transformer file reads the old
int as an int (`old + 5`), reads v2's own value (`ctx.current`), reads the struct
fields named `text`/`raw`/`bytes`, and replaces the bag by a one-element array.
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
    #include <stdlib.h>
    #include <unistd.h>
    #include "ekiden.h"

    struct note { int text; int raw; int bytes; };
    struct bag { int *items; int nitems; };
    EKIDEN_HINT_ARRAY(struct bag, items, nitems);

    int hits;
    struct note note;
    struct bag bag;

    int main(void)
    {
        char line[64];

        hits = VERSION == 2 ? 1000 : 0; /* what v2's code builds before the tag */
        (void)EKIDEN_TAG(hits);
        if (EKIDEN_TAG(note))
            note = (struct note){ 1, 2, 3 };
        if (EKIDEN_TAG(bag)) {
            bag.nitems = 3;
            bag.items = calloc(3, sizeof(int));
            for (int i = 0; i < 3; i++)
                bag.items[i] = 10 * (i + 1);
        }
        for (;;) {
            EKIDEN_UPDATE_POINT(loop);
            ssize_t n = read(0, line, sizeof line);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                return 0;
            hits++;
            printf("v%d hits=%d note=%d,%d,%d bag=", VERSION, hits, note.text, note.raw,
                   note.bytes);
            for (int i = 0; i < bag.nitems; i++)
                printf("%d;", bag.items[i]);
            printf("\\n");
            fflush(stdout);
        }
    }
    """
)

XFORM = textwrap.dedent(
    """\
    from ekiden_trace.xform import variable


    @variable("hits")
    def hits(old, ctx):
        return old + 5 + ctx.current  # an int, and v2's own 1000


    @variable("note")
    def note(old, ctx):
        return {"text": old.text * 10, "raw": old.raw * 10, "bytes": old.bytes * 10}


    @variable("bag")
    def bag(old, ctx):
        return {"items": ctx.array("int", [sum(old.items)]), "nitems": 1}
    """
)


def build(folder: Path, version: int) -> Path:
    source = folder / "shapes.c"
    source.write_text(SOURCE)
    return compile_marked(
        source, folder / f"shapes-v{version}", "-g", "-O2", f"-DVERSION={version}"
    )


def ask(proc: subprocess.Popen[str]) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("x\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


@needs_ptrace
def test_transformers_get_ints_fields_current_values_and_one_element_arrays(
    tmp_path: Path,
) -> None:
    v1, v2 = build(tmp_path, 1), build(tmp_path, 2)
    xform = tmp_path / "xform.py"
    xform.write_text(XFORM)
    proc = subprocess.Popen([str(v1)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert ask(proc) == "v1 hits=1 note=1,2,3 bag=10;20;30;"
        assert ask(proc) == "v1 hits=2 note=1,2,3 bag=10;20;30;"
        result = run_tool("attach", str(proc.pid), "--new", str(v2), "--xform", str(xform))
        assert "Traceback" not in result.stderr
        assert result.returncode == 0, result.stderr
        assert ask(proc) == "v2 hits=1008 note=10,20,30 bag=60;"
    finally:
        proc.kill()
        proc.wait()
