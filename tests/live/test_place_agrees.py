"""The compiled restore (state/core/place.py) writes what the Python encoder writes.

For every fixture pair, and for the rollback's identity pair: one reference snapshot of
an idle v1, its heap as columns, placed into one running v2 by both paths; the same
objects, the same bytes, pointers equal once addresses are mapped.
"""

from __future__ import annotations

import pytest
from clients import LineClient, fixture_binary, start_server
from conftest import REPO, needs_ptrace
from placing import (
    columns_of,
    differences,
    place,
    plan_for,
    reference_snapshot,
    stopped_backend,
)

pytestmark = needs_ptrace

# (fixture, v1, v2, transformer file, server arguments, whether the recipes carry the
# heap that the carried variables reach, when they reach one)
PAIRS = [
    ("counter", "v1", "v2", None, (), True),
    ("kvstore", "v1", "v2", "xform_v1_v2.py", (), True),
    ("kvstore", "v2", "v3", "xform_v2_v3.py", (), True),
    ("kvstore", "v3", "v1", "xform_v3_v1.py", (), True),
    ("kvstore", "v2", "v1", "xform_v2_v1.py", (), True),
    ("kvstore", "v1", "v1", None, (), True),
    ("session", "v1", "v2", None, (), True),
    ("deep", "v1", "v2", None, ("1000",), True),
    ("interior", "v1", "v2", None, (), True),
    ("reaper", "v1", "v2", None, (), True),
    ("rename", "v1", "v2", "xform_v1_v2.py", (), True),
    ("hints", "v1", "v2", None, (), True),
    ("retry", "v1", "v2", None, (), True),
]


# What fills each fixture's heap, and the reply every request gets.
LOADS = {
    "kvstore": ([f"SET key{i} value{i}" for i in range(300)], "OK"),
    "hints": ([f"PUT k{i} {i}" for i in range(20)] + ["BANNER welcome"], "ok"),
}


def load(fixture: str, port: int) -> None:
    """Fill the fixture's heap through its protocol."""
    if fixture in LOADS:
        lines, reply = LOADS[fixture]
        client = LineClient(port)
        try:
            for line in lines:
                assert client.command(line).startswith(reply)
        finally:
            client.close()


@pytest.mark.parametrize(
    ("fixture", "old", "new", "xform", "args", "carried"),
    PAIRS,
    ids=[f"{p[0]}-{p[1]}-{p[2]}" for p in PAIRS],
)
def test_compiled_restore_writes_what_the_encoder_writes(
    fixture: str, old: str, new: str, xform: str | None, args: tuple[str, ...], carried: bool
) -> None:
    v1, v2 = fixture_binary(fixture, old), fixture_binary(fixture, new)
    plan, transformers = plan_for(v1, v2, REPO / "fixtures" / fixture / xform if xform else None)
    with start_server(v1, *args) as server:
        load(fixture, server.port)
        snapshot = reference_snapshot(server.pid)
        heap = columns_of(snapshot, plan.old)
    with start_server(v2, *args) as target, stopped_backend(target.pid, plan.new) as backend:
        reference = place(backend, plan, snapshot, transformers, None)
        compiled = place(backend, plan, snapshot, transformers, heap)
        assert not differences(reference, compiled, backend.tracee.read)
    assert not reference.compiled
    assert compiled.compiled == (carried and bool(reference.objects))
    assert (compiled.objects_written, compiled.bytes_written) == (
        reference.objects_written,
        reference.bytes_written,
    )


def test_a_field_transformer_on_the_heap_leaves_it_to_the_python_path() -> None:
    """The recipes cannot run a transformer: the whole heap goes by the Python encoder,
    which runs it for every entry."""
    v1, v2 = fixture_binary("kvstore", "v1"), fixture_binary("kvstore", "v2")
    plan, transformers = plan_for(v1, v2, REPO / "fixtures" / "kvstore" / "xform_v1_v2.py")
    transformers.fields[("struct entry", "hits")] = lambda old, ctx: 7
    with start_server(v1) as server:
        load("kvstore", server.port)
        snapshot = reference_snapshot(server.pid)
        heap = columns_of(snapshot, plan.old)
    with start_server(v2) as target, stopped_backend(target.pid, plan.new) as backend:
        reference = place(backend, plan, snapshot, transformers, None)
        declined = place(backend, plan, snapshot, transformers, heap)
        assert not differences(reference, declined, backend.tracee.read)
    assert not declined.compiled
    assert declined.objects_written == reference.objects_written == 3 * 300 + 2
