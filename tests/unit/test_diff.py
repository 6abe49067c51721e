"""`ekiden-trace diff OLD NEW`: the static compatibility report, before any process."""

from __future__ import annotations

import json
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest
from clients import fixture_binary
from conftest import REPO, compile_marked, run_tool, tool_json

XFORMS = REPO / "fixtures" / "kvstore"


def diff(old: Path, new: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_tool("diff", str(old), str(new), *extra)


def test_kvstore_v1_v2_shows_every_change_and_what_it_drops() -> None:
    result = diff(fixture_binary("kvstore", "v1"), fixture_binary("kvstore", "v2"))
    assert result.returncode == 9, result.stderr  # state would be dropped
    out = result.stdout
    for expected in (
        "struct table: field count removed (dropped, likely renamed to nentries)",
        "struct table: field nentries added (keeps v2's initial value)",
        "struct entry: field hits added",
        "struct server_config: field histogram removed (dropped, not acknowledged)",
        "struct limits: field max_value_len: int -> long (widened)",
        'struct table.count (size_t), likely renamed to nentries: rename("struct table", '
        '"count", "nentries")',
        'struct server_config.histogram (unsigned long [8]): drop("struct server_config", '
        '"histogram")',
        "the update drops state no transformer file acknowledges",
    ):
        assert expected in out, expected


def test_transformer_file_changes_the_report() -> None:
    result = diff(
        fixture_binary("kvstore", "v1"),
        fixture_binary("kvstore", "v2"),
        "--xform",
        str(XFORMS / "xform_v1_v2.py"),
    )
    assert result.returncode == 0
    assert "struct table: field count renamed to nentries" in result.stdout
    assert "struct server_config.histogram (unsigned long [8]), acknowledged" in result.stdout
    assert "the update can be done" in result.stdout


RENAME = REPO / "fixtures" / "rename"


def test_renamed_field_and_variable_are_flagged_as_likely_renames() -> None:
    """fixtures/rename: v2 renames a field and a local and removes a field."""
    result = diff(fixture_binary("rename", "v1"), fixture_binary("rename", "v2"), "--json")
    assert result.returncode == 9  # state would be dropped
    plan = json.loads(result.stdout)
    assert plan["ok"] is True
    assert [(d["what"], d["acknowledged"], d["likely_renamed_to"]) for d in plan["drops"]] == [
        ("main:client_fd", False, "main:conn_fd"),
        ("struct stats.owner", False, "user"),
        ("struct stats.debug_bytes", False, None),
    ]

    fixed = diff(
        fixture_binary("rename", "v1"),
        fixture_binary("rename", "v2"),
        "--xform",
        str(RENAME / "xform_v1_v2.py"),
        "--json",
    )
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    plan = json.loads(fixed.stdout)
    actions = {v["key"]: v["action"] for v in plan["variables"]}
    assert actions["main:conn_fd"] == "transfer"  # v1's client_fd, renamed
    assert plan["types"]["struct stats"] == [
        "field owner renamed to user",
        "field debug_bytes removed (dropped, acknowledged)",
    ]
    assert [(d["what"], d["acknowledged"]) for d in plan["drops"]] == [
        ("struct stats.debug_bytes", True)
    ]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (
            'drop("struct stats", "debug")',
            'drop("struct stats", "debug"): the update drops no such',
        ),
        ('drop("served")', 'drop("served"): the update drops no such state'),
        ('rename("struct stats", "owner", "usr")', "v2's a field usr"),
        ('rename("client_fd", "conn")', "one called conn"),
        (
            "@field('struct stats', 'users')\ndef f(old, ctx): return 0",
            "v2's struct stats has no field users",
        ),
        ("@type_('struct stat')\ndef f(old, ctx): return 0", "v1 has no type struct stat"),
        ("@variable('stat')\ndef f(old, ctx): return 0", "v2 has no tagged variable stat"),
    ],
)
def test_transformer_keys_that_match_nothing_are_errors(
    tmp_path: Path, line: str, words: str
) -> None:
    xform = tmp_path / "typo.py"
    xform.write_text(
        "from ekiden_trace.xform import drop, field, rename, type_, variable\n" + line + "\n"
    )
    result = diff(
        fixture_binary("rename", "v1"), fixture_binary("rename", "v2"), "--xform", str(xform)
    )
    assert result.returncode == 7, result.stdout
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1  # one sentence


def test_new_tag_is_initialised_by_v2() -> None:
    result = diff(fixture_binary("counter", "v1"), fixture_binary("counter", "v2"), "--json")
    plan = json.loads(result.stdout)
    actions = {v["key"]: v["action"] for v in plan["variables"]}
    assert actions["main:nlines"] == "initialised by v2"
    assert actions["main:nclients"] == "transfer"
    assert plan["ok"] is True


def build(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / f"{name}.c"
    path.write_text(textwrap.dedent(source))
    return compile_marked(path, tmp_path / name, "-g", "-O2")


PROGRAM = """
    #include "ekiden.h"
    enum colour {{ {enumerators} }};
    struct pair {{ {fields} }};
    enum colour colour;
    struct pair pair;
    int main(void) {{
        (void)EKIDEN_TAG(colour);
        (void)EKIDEN_TAG(pair);
        for (;;) {{ EKIDEN_UPDATE_POINT(top); }}
    }}
"""


def test_removed_enumerator_and_changed_field_need_transformers(tmp_path: Path) -> None:
    old = build(
        tmp_path, "old", PROGRAM.format(enumerators="RED, GREEN, BLUE", fields="int a; int b;")
    )
    new = build(
        tmp_path,
        "new",
        PROGRAM.format(enumerators="RED, GREEN", fields="int a; struct { int x; } b;"),
    )
    result = diff(old, new)
    assert result.returncode == 10
    assert "enumerators BLUE of enum colour are gone in v2" in result.stdout
    assert "pair.b: int became struct" in result.stdout

    xform = tmp_path / "fix.py"
    xform.write_text(
        "from ekiden_trace.xform import type_\n"
        "@type_('enum colour')\n"
        "def colour(old, ctx):\n"
        "    return 'RED' if old == 'BLUE' else old\n"
        "@type_('struct pair')\n"
        "def pair(old, ctx):\n"
        "    return {'a': old.a, 'b': {'x': old.b}}\n"
    )
    fixed = diff(old, new, "--xform", str(xform))
    assert fixed.returncode == 0, fixed.stdout
    assert "converted by a type transformer" in fixed.stdout


def chain_program(types: int, last_fields: str) -> str:
    """C source of `types` struct types, each pointing to the next, the first one tagged."""
    parts = ['#include "ekiden.h"\n']
    parts += [f"struct t{i} {{ struct t{i + 1} *next; int value; }};\n" for i in range(types - 1)]
    parts.append(f"struct t{types - 1} {{ {last_fields} }};\n")
    parts.append(
        "struct t0 head;\n"
        "int main(void) {\n"
        "    (void)EKIDEN_TAG(head);\n"
        "    for (;;) { EKIDEN_UPDATE_POINT(top); }\n"
        "}\n"
    )
    return "".join(parts)


def test_thousands_of_nested_types(tmp_path: Path) -> None:
    """A chain of 2,000 types is compared to its end (it used to exhaust Python's stack)."""
    types = 2000
    old = build(tmp_path, "old", chain_program(types, "int value;"))
    grown = build(tmp_path, "grown", chain_program(types, "int value; long extra;"))
    changed = build(tmp_path, "changed", chain_program(types, "struct { int x; } value;"))

    plan = tool_json("diff", str(old), str(grown))
    assert plan["ok"] is True
    assert plan["types"][f"struct t{types - 1}"] == ["field extra added (keeps v2's initial value)"]

    result = diff(old, changed)
    assert result.returncode == 10, result.stderr
    path = "head" + ".next*" * (types - 1) + ".value"
    assert f"{path}: int became struct {{...}}; give a transformer" in result.stdout


def test_plan_is_cached_until_the_transformers_change(tmp_path: Path) -> None:
    old = build(tmp_path, "old", PROGRAM.format(enumerators="RED, GREEN", fields="int a;"))
    new = build(tmp_path, "new", PROGRAM.format(enumerators="RED", fields="int a;"))
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    first = run_tool("diff", str(old), str(new), env=cache)
    assert first.returncode == 10
    [entry] = (tmp_path / "cache" / "ekiden-trace").glob("*-plan.json")
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    written = entry.stat().st_mtime_ns

    again = run_tool("diff", str(old), str(new), env=cache)
    assert again.stdout == first.stdout
    assert entry.stat().st_mtime_ns == written  # read, not computed again

    xform = tmp_path / "fix.py"
    xform.write_text(
        "from ekiden_trace.xform import type_\n"
        "@type_('enum colour')\n"
        "def colour(old, ctx):\n"
        "    return 'RED'\n"
    )
    fixed = run_tool("diff", str(old), str(new), "--xform", str(xform), env=cache)
    assert fixed.returncode == 0, fixed.stdout
    assert "enum colour: converted by a type transformer" in fixed.stdout
