"""Hints real servers need (fixtures/hints): a macro length, a string with capacity, and
a buffer whose length lives in the table its node points to.  Each is read by `inspect`
as the hint says and arrives whole in v2; a bad hint is refused by `points`, `diff` and
`attach` alike, with one sentence, before any process is touched."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from clients import LineClient, fixture_binary, start_server
from conftest import compile_marked, needs_ptrace, run_tool, tool_json

V1, V2 = fixture_binary("hints", "v1"), fixture_binary("hints", "v2")


def test_points_lists_the_hints_with_macros_expanded() -> None:
    hints = {h["subject"]: h["hint"] for h in tool_json("points", str(V1))["hints"]}
    assert hints["ranges"] == "array of (2 * (sizeof(struct range) / sizeof(int))) = 4"
    assert hints["struct mystr.p_buf"] == "string of len in alloc_bytes bytes"
    assert hints["struct node.key"] == "buffer of table->key_size"


def fill(client: LineClient) -> None:
    assert client.command("PUT alpha 7") == "ok"
    assert client.command("PUT beta 9") == "ok"
    assert client.command("BANNER welcome") == "ok"  # 8 bytes, in hello's 12
    assert client.command("RANGE 3 10 20") == "ok"


@needs_ptrace
def test_inspect_reads_each_hinted_pointer_as_its_hint_says() -> None:
    with start_server(V1) as server, LineClient(server.port) as client:
        fill(client)
        state = tool_json("inspect", str(server.pid))
        values = {v["name"]: v["value"] for v in state["variables"]}
        objects = state["objects"]
        ranges = objects[str(values["ranges"]["ref"])]
        assert ranges["count"] == 4 and ranges["value"][3]["fields"] == {"lo": 10, "hi": 20}
        banner = objects[str(values["banner"]["fields"]["p_buf"]["ref"])]
        assert (banner["string"], banner["capacity"]) == ("welcome", 12)
        keys = sorted(o["bytes"] for o in objects.values() if o["type"] == "char" and "bytes" in o)
        assert keys == sorted((name.encode().ljust(8, b"\0")).hex() for name in ("alpha", "beta"))
        text = run_tool("inspect", str(server.pid)).stdout
        assert '"welcome" /* in 12 bytes */' in text


@needs_ptrace
def test_hinted_state_arrives_whole_in_v2() -> None:
    with start_server(V1) as server, LineClient(server.port) as client:
        fill(client)
        result = run_tool("attach", str(server.pid), "--new", str(V2))
        assert "Traceback" not in result.stderr
        assert result.returncode == 0, result.stderr
        assert client.command("GET alpha") == "v2 alpha=7"
        assert client.command("GET beta") == "v2 beta=9"
        assert client.command("SHOW") == "v2 banner=welcome ranges=0-0,0-0,0-0,10-20,"
        # the capacity came over with the text: v2 appends in place, up to 12 bytes
        assert client.command("APPEND !!") == "ok"
        assert client.command("APPEND !!!") == "full"
        assert client.command("SHOW") == "v2 banner=welcome!! ranges=0-0,0-0,0-0,10-20,"


BAD = textwrap.dedent(
    """\
    #include <unistd.h>
    #include "ekiden.h"

    struct bag { int *items; int n; };
    EKIDEN_HINT_ARRAY(struct bag, items, LENGTH);
    struct bag bag;

    int main(void)
    {
        (void)EKIDEN_TAG(bag);
        for (;;) {
            EKIDEN_UPDATE_POINT(loop);
            pause();
        }
    }
    """
)


def test_a_hint_on_a_missing_variable_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "bad.c"
    source.write_text(BAD.replace("LENGTH", "n") + "EKIDEN_HINT_VAR_ARRAY(nothing, 4);\n")
    binary = compile_marked(source, tmp_path / "bad", "-g", "-O2")
    result = run_tool("points", str(binary))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "the array hint on nothing names a variable the debug info does not have" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("length", "says"),
    [
        ("count", "`count` is not a field of struct bag or an integer variable"),
        ("n +", "is not understood"),
        ("sizeof(struct nothing)", "whose sizeof names `struct nothing`"),
    ],
)
def test_a_bad_hint_is_refused_by_points_diff_and_attach(
    tmp_path: Path, length: str, says: str
) -> None:
    source = tmp_path / "bad.c"
    source.write_text(BAD.replace("LENGTH", length))
    binary = compile_marked(source, tmp_path / "bad", "-g", "-O2")
    for args in (["points", str(binary)], ["diff", str(binary), str(binary)]):
        result = run_tool(*args)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert "hint on struct bag.items" in result.stderr and says in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    with start_server(V1) as server:
        result = run_tool("attach", str(server.pid), "--new", str(binary))
        assert result.returncode == 2 and says in result.stderr
        assert (
            json.loads(run_tool("inspect", str(server.pid), "--json").stdout)["pid"] == server.pid
        )
