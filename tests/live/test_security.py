"""What the tool trusts: the new binary's ownership and identity, and the target's pointers."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

from clients import CounterClient, KvClient, code_bytes, fixture_binary, start_server
from conftest import (
    compile_marked,
    needs_ptrace,
    run_tool,
    start_tool,
    tracer_of,
    wait_traced,
)

pytestmark = needs_ptrace


def copy_of(version: str, tmp: Path, mode: int, uid: int = 0) -> Path:
    path = tmp / f"kvstore-{version}"
    shutil.copy(fixture_binary("kvstore", version), path)
    path.chmod(mode)
    os.chown(path, uid, -1)
    return path


# kvstore v1 -> v2 drops state: --allow-drop, as what is tested here comes after that check
ALLOW_DROP = "--allow-drop"


def test_binary_writable_by_others_needs_force(tmp_path: Path) -> None:
    new = copy_of("v2", tmp_path, 0o757)
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        refused = run_tool("attach", str(server.pid), "--new", str(new), ALLOW_DROP)
        assert refused.returncode == 2 and "writable by any user" in refused.stderr
        assert client.stats()["version"] == 1
        forced = run_tool("attach", str(server.pid), "--new", str(new), "--force", ALLOW_DROP)
        assert forced.returncode == 0, forced.stderr
        assert client.stats()["version"] == 2


def test_binary_owned_by_another_user_needs_force(tmp_path: Path) -> None:
    new = copy_of("v2", tmp_path, 0o755, uid=65534)
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        refused = run_tool("attach", str(server.pid), "--new", str(new), ALLOW_DROP)
        assert refused.returncode == 2 and "owned by uid 65534" in refused.stderr
        assert client.stats()["version"] == 1
        forced = run_tool("attach", str(server.pid), "--new", str(new), "--force", ALLOW_DROP)
        assert forced.returncode == 0


def test_binary_swapped_after_its_check_is_not_kept(tmp_path: Path) -> None:
    new = tmp_path / "counter-v2"
    shutil.copy(fixture_binary("counter", "v2"), new)
    with start_server(fixture_binary("counter", "v1")) as server:
        client = CounterClient(server.port)
        assert client.send("one") == "v1 #1 echo: one"
        # The tool checks v2, then waits for con_loop, which the client's session delays.
        tool = start_tool(
            "attach", str(server.pid), "--new", str(new), "--point", "con_loop", "--timeout", "30"
        )
        wait_traced(server.pid, tool.pid)
        swapped = tmp_path / "other"
        shutil.copy(fixture_binary("counter", "v1"), swapped)
        swapped.rename(new)  # a different file now sits at the checked path
        client.close()  # main returns to con_loop: the update goes ahead, and finds the swap
        _, err = tool.communicate(timeout=60)
        assert tool.returncode == 11, err
        assert "changed between its check and the exec" in err
        with CounterClient(server.port) as again:
            assert again.send("two") == "v1 #2 echo: two"


def test_crafted_lengths_cannot_make_the_tool_read_without_bound(tmp_path: Path) -> None:
    source = tmp_path / "crafted.c"
    source.write_text(
        textwrap.dedent("""
        #include <stdio.h>
        #include <stdlib.h>
        #include <unistd.h>
        #include "ekiden.h"
        struct table { long *slots; unsigned long nslots; };
        EKIDEN_HINT_ARRAY(struct table, slots, nslots);
        struct table table;
        int main(int argc, char **argv) {
            table.slots = malloc(64);
            table.nslots = 1UL << 50;  /* a lie: the tool must not believe it */
            (void)EKIDEN_TAG(table);
            printf("listening on %s\\n", argc > 1 ? argv[1] : "0");
            fflush(stdout);
            for (;;) { EKIDEN_UPDATE_POINT(loop); pause(); }
        }
    """)
    )
    binary = compile_marked(source, tmp_path / "crafted", "-g", "-O2")
    with start_server(binary) as server:
        before = code_bytes(server.pid)
        result = run_tool("inspect", str(server.pid), timeout=120)
        assert result.returncode == 1, result.stderr
        assert "exceeds" in result.stderr or "more than" in result.stderr, result.stderr
        assert tracer_of(server.pid) == 0 and code_bytes(server.pid) == before
        assert server.alive()
