"""A transformer that returns the wrong shape: the update is rolled back after the exec,
with the transformer's name and the field path, and v1 serves on with its state."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from clients import KvClient, fixture_binary, start_server
from conftest import needs_ptrace, process_state, run_tool, tracer_of

pytestmark = needs_ptrace

RENAMED = """
    @field("struct table", "nentries")
    def nentries(old_table, ctx):
        return old_table.count
"""

# (the transformer file's body after the renamed field, words the error must contain)
CASES = {
    # Was accepted: v2 took the address of a string for its table and crashed on a request.
    "str for a struct pointer": (
        """
        @variable("table")
        def table_as_text(old, ctx):
            return "a table"
        """,
        "the transformer table_as_text (of table) returned a value v2 cannot hold: table: "
        "a str cannot be written as v2's struct table *",
    ),
    # Was a TypeError after the exec: no rollback, v2 left sleeping in its mark for ever.
    "None for an array": (
        """
        @variable("client_fds")
        def no_clients(old, ctx):
            return None
        """,
        "no_clients (of client_fds) returned a value v2 cannot hold: client_fds: None",
    ),
    "a list for a struct": (
        """
        @variable("config")
        def config_list(old, ctx):
            return [1, 2, 3]
        """,
        "config_list (of config) returned a value v2 cannot hold: config: a list cannot be "
        "written as v2's struct server_config",
    ),
    "a field of the wrong shape": (
        """
        @field("struct limits", "max_value_len")
        def limit(old, ctx):
            return {"value": 3}
        """,
        "limit (of struct limits.max_value_len) returned a value v2 cannot hold: "
        "config.limits.max_value_len: a dict cannot be written as v2's long",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_wrong_transformer_result_rolls_back(case: str, tmp_path: Path) -> None:
    body, words = CASES[case]
    xform = tmp_path / "xform.py"
    source = "from ekiden_trace.xform import field, variable\n" + textwrap.dedent(RENAMED)
    xform.write_text(source + textwrap.dedent(body))
    with start_server(fixture_binary("kvstore", "v1")) as server, KvClient(server.port) as client:
        client.set("kept", "yes")
        result = run_tool(
            "attach",
            str(server.pid),
            "--new",
            str(fixture_binary("kvstore", "v2")),
            "--xform",
            str(xform),
            "--allow-drop",  # what v2 drops is not the point here
        )
        assert result.returncode == 11, (result.returncode, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout
        assert "rolled back" in result.stderr and words in result.stderr, result.stderr
        assert client.get("kept") == "yes" and client.stats()["version"] == 1
        assert tracer_of(server.pid) == 0 and process_state(server.pid) in "SR"
        with KvClient(server.port) as fresh:
            assert fresh.get("kept") == "yes"
