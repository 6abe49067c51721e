"""`ekiden-trace diff OLD NEW`: the static compatibility report, before any process."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

from clients import fixture_binary
from conftest import REPO, run_tool

XFORMS = REPO / "fixtures" / "kvstore"


def diff(old: Path, new: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_tool("diff", str(old), str(new), *extra)


def test_kvstore_v1_v2_shows_every_change() -> None:
    result = diff(fixture_binary("kvstore", "v1"), fixture_binary("kvstore", "v2"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in (
        "struct table: field count removed (dropped)",
        "struct table: field nentries added (keeps v2's initial value)",
        "struct entry: field hits added",
        "struct server_config: field histogram removed (dropped)",
        "struct limits: field max_value_len: int -> long (widened)",
        "the update can be done",
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
    assert "field nentries added (set by a transformer)" in result.stdout


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
    binary = tmp_path / name
    subprocess.run(
        ["gcc", "-g", "-O2", "-I", str(REPO / "probes"), str(path), "-o", str(binary)], check=True
    )
    return binary


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
