"""Golden outputs of `points`, `diff` and `inspect`, as a user reads them.

`points` and `diff` are rendered from the fixtures' real binaries; `inspect` from
a snapshot built in memory (tests/unit/kvstate.py) with fixed addresses.  The
expected texts are in tests/unit/golden/; after a deliberate change of the
output, regenerate them and review the diff:

    EKIDEN_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_render_golden.py

Outputs are made machine-independent before comparison (see `normalise`): the
repository's absolute path becomes `<repo>`, build-ids become `<build-id>`, and
the link-time addresses of update points become `<address>` (they depend on the
compiler).  Everything else is compared as printed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from clients import fixture_binary
from conftest import REPO, run_tool
from kvstate import HEAP, kvstore_v1_snapshot

from ekiden_trace.binary.program import Program
from ekiden_trace.plan.planner import plan_update
from ekiden_trace.plan.transformers import load_transformers
from ekiden_trace.render import (
    plan_json,
    plan_text,
    points_json,
    points_text,
    snapshot_json,
    snapshot_text,
)
from ekiden_trace.state.snapshot import (
    CapturedVariable,
    EnumValue,
    GlobalRef,
    LiteralRef,
    Pointer,
    Snapshot,
    Unfollowed,
)

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("EKIDEN_UPDATE_GOLDEN") == "1"


def normalise(text: str, code_addresses: bool = False) -> str:
    """Text without what differs between machines: the repository's path, build-ids and
    (for `points --json`) the link-time addresses of update points."""
    text = text.replace(str(REPO) + "/", "<repo>/")
    text = re.sub(r"\b[0-9a-f]{40}\b", "<build-id>", text)
    if code_addresses:
        text = re.sub(r'("address": )"0x[0-9a-f]+"', r'\1"<address>"', text)
    return text


def check_golden(name: str, output: str, code_addresses: bool = False) -> None:
    """Compare output (normalised) with golden/NAME, or rewrite it under EKIDEN_UPDATE_GOLDEN=1."""
    path = GOLDEN / name
    output = normalise(output, code_addresses)
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(output)
        return
    assert path.exists(), f"{path} is missing: run with EKIDEN_UPDATE_GOLDEN=1 to write it"
    assert output == path.read_text(), f"{name} differs from its golden file"


def program(name: str, version: str) -> Program:
    return Program(fixture_binary(name, version))


def as_json(data: object) -> str:
    """JSON as the CLI prints it."""
    return json.dumps(data, indent=2) + "\n"


# -- points ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version"), [("kvstore", "v1"), ("counter", "v2"), ("ftpd", "v2")]
)
def test_points_text(name: str, version: str) -> None:
    check_golden(f"points_{name}_{version}.txt", points_text(program(name, version)))


def test_points_json() -> None:
    data = as_json(points_json(program("kvstore", "v1")))
    check_golden("points_kvstore_v1.json", data, code_addresses=True)


def test_points_cli_prints_the_golden_text() -> None:
    """The command prints exactly what render makes (the goldens are what users see)."""
    result = run_tool("points", str(fixture_binary("kvstore", "v1")))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    if not UPDATE:
        assert normalise(result.stdout) == (GOLDEN / "points_kvstore_v1.txt").read_text()


# -- diff ------------------------------------------------------------------------

DIFFS = [
    ("kvstore", "v1", "v2", None),
    ("kvstore", "v1", "v2", "xform_v1_v2.py"),
    ("kvstore", "v2", "v3", None),
    ("kvstore", "v2", "v3", "xform_v2_v3.py"),
    ("kvstore", "v3", "v1", "xform_v3_v1.py"),
    ("counter", "v1", "v2", None),
    ("counter", "v2", "v1", None),
    ("rename", "v1", "v2", None),
    ("rename", "v1", "v2", "xform_v1_v2.py"),
]


def diff_name(name: str, old: str, new: str, xform: str | None) -> str:
    return f"diff_{name}_{old}_{new}" + ("_xform" if xform else "")


@pytest.mark.parametrize(("name", "old", "new", "xform"), DIFFS)
def test_diff_text(name: str, old: str, new: str, xform: str | None) -> None:
    transformers = load_transformers(str(REPO / "fixtures" / name / xform) if xform else None)
    update = plan_update(program(name, old), program(name, new), transformers)
    check_golden(diff_name(name, old, new, xform) + ".txt", plan_text(update))


def test_diff_json() -> None:
    update = plan_update(
        program("kvstore", "v1"), program("kvstore", "v2"), load_transformers(None)
    )
    check_golden("diff_kvstore_v1_v2.json", as_json(plan_json(update)))


def test_diff_cli_prints_the_golden_text() -> None:
    old, new = fixture_binary("kvstore", "v1"), fixture_binary("kvstore", "v2")
    result = run_tool("diff", str(old), str(new))
    assert result.returncode == 9 and "Traceback" not in result.stderr, result.stderr  # drops
    if not UPDATE:
        assert normalise(result.stdout) == (GOLDEN / "diff_kvstore_v1_v2.txt").read_text()


# -- inspect ---------------------------------------------------------------------


def inspect_snapshot() -> Snapshot:
    """kvstore v1's state, plus a variable of each kind the fixture lacks: a string
    literal, a pointer into a global, an unfollowed pointer, an enum value with no
    enumerator and a local whose function is not active."""
    snapshot = kvstore_v1_snapshot()

    def extra(declaration: str, c_type: str, value: object, absent: str | None = None) -> None:
        name = declaration.rsplit(" ", 1)[-1].lstrip("*")
        snapshot.variables.append(
            CapturedVariable(
                name=name,
                key=f"main:{name}",
                scope="local",
                scope_text="local of main",
                function="main",
                file="fixtures/kvstore/v1.c",
                c_type=c_type,
                declaration=declaration,
                address=None if absent else 0x7FFC_0000_0100 + 8 * len(snapshot.variables),
                value=value,  # type: ignore[arg-type]
                absent=absent,
            )
        )

    extra(
        "const char *banner",
        "const char *",
        Pointer(0x5555_3000_4000, LiteralRef(b"kvstore v1 ready")),
    )
    extra("int *slot", "int *", Pointer(0x5555_4000_0010, GlobalRef("client_fds", 16)))
    extra("void *scratch", "void *", Pointer(HEAP + 0x9000, Unfollowed("untyped")))
    extra("enum command last", "enum command", EnumValue(None, 42, "enum command"))
    extra("int pending", "int", None, absent="handle_line is not active")
    return snapshot


def test_inspect_text() -> None:
    check_golden("inspect_kvstore_v1.txt", snapshot_text(inspect_snapshot()))


def test_inspect_json() -> None:
    """Without `inbufs`, whose 64 x 2048 bytes in hex would make a 280 KB golden file."""
    snapshot = inspect_snapshot()
    snapshot.variables = [v for v in snapshot.variables if v.name != "inbufs"]
    check_golden("inspect_kvstore_v1.json", as_json(snapshot_json(snapshot)))


def test_inspect_text_shows_the_values_a_user_looks_for() -> None:
    """A few lines of the golden text, spelled out, so a regenerated golden that lost
    them cannot pass unnoticed."""
    text = snapshot_text(inspect_snapshot())
    for line in (
        "stopped at update point poll_loop in main (fixtures/kvstore/v1.c:566)",
        "struct table *table  /* global */ = #1",
        "    mode = MODE_READONLY,",
        "    endpoint = { port = 7000 },",
        f"#1 struct table @ {HEAP + 0x100:#x} = "
        "{ buckets = #2, nbuckets = 64, count = 2, hash = &djb2 }",
        '= { key = "alpha", value = "one", next = NULL }',
        'const char *banner  /* local of main */ = "kvstore v1 ready"',
        "int *slot  /* local of main */ = &client_fds+16",
        "enum command last  /* local of main */ = 42 /* no enumerator */",
        "int pending  /* local of main */ = <handle_line is not active>",
        "heap objects (8, strings shown inline):",
    ):
        assert line in text, line
