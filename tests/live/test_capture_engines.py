"""The compiled capture and the reference capture agree, object by object.

Every v1 of the fixture pairs the other live tests update (test_diff_attach_agree's
PAIRS), stopped at its update point with some state in it, is captured twice in
the same stop: by the compiled walk (state/core) and by the reference Python
walk.  The snapshots must be equal by address: every variable's value, and every
heap object's type, count, string and decoded value, pointers into the heap
compared by target address and offset.  The test also pins which engine ran.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from clients import KvClient, LineClient, connected, fixture_binary, start_server
from conftest import REPO, compile_marked, needs_ptrace, run_tool
from test_diff_attach_agree import PAIRS

from ekiden_trace.ops.inspect import InspectOptions, stop_of, stopped
from ekiden_trace.state.capture import Capturer
from ekiden_trace.state.snapshot import ObjectRef, Pointer, Snapshot

pytestmark = needs_ptrace

# What the compiled engine does with each v1: "compiled", or the start of the reason
# the capture took the reference path.
EXPECTED = {
    ("counter", "v1"): "compiled",
    ("kvstore", "v1"): "compiled",
    ("kvstore", "v2"): "compiled",
    ("kvstore", "v3"): "compiled",
    ("session", "v1"): "compiled",
    ("deep", "v1"): "compiled",
    # Its tags point into the ranges array before the array: the reference takes the
    # element objects into the array; the compiled walk follows the larger root first.
    ("interior", "v1"): "compiled",
    ("reaper", "v1"): "compiled",
    ("rename", "v1"): "compiled",
    ("hints", "v1"): "python: not expressible: a variable's string hint",
    ("retry", "v1"): "compiled",
    ("shrink", "v1"): "compiled",
    ("behind", "v1"): "python: not expressible: a variable's points_to hint",
    ("units", "v1"): "compiled",
}
PROGRAMS = Path(__file__).resolve().parent / "programs"
TARGETS = sorted({(fixture, old, args) for fixture, old, _, _, args in PAIRS})


def _plain(value: Any, addr_of: dict[int, int]) -> Any:
    """A value with heap object ids replaced by addresses, as nested tuples."""
    if isinstance(value, Pointer):
        target = value.target
        if isinstance(target, ObjectRef):
            return ("pointer", value.addr, "heap", addr_of[target.object_id], target.offset)
        return ("pointer", value.addr, _plain(target, addr_of))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = (getattr(value, f.name) for f in dataclasses.fields(value))
        return (type(value).__name__, *(_plain(f, addr_of) for f in fields))
    if isinstance(value, dict):
        return {key: _plain(item, addr_of) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item, addr_of) for item in value]
    return value


def by_address(snapshot: Snapshot) -> tuple[list[Any], dict[int, Any]]:
    """The snapshot's variables and heap objects (keyed by address), ids left out."""
    addr_of = {oid: obj.addr for oid, obj in snapshot.objects.items()}
    variables = [(v.key, v.address, _plain(v.value, addr_of)) for v in snapshot.variables]
    objects = {
        obj.addr: (
            obj.type_name,
            obj.count,
            obj.type_id,
            obj.string,
            obj.is_buffer,
            obj.shown,
            _plain(obj.value, addr_of),
        )
        for obj in snapshot.objects.values()
    }
    return variables, objects


def _fill(fixture: str, port: int) -> None:
    """Put some state into a server that takes it from clients."""
    if fixture == "kvstore":
        with connected(KvClient, port, 1) as (client,):
            for i in range(50):
                assert client.set(f"key{i}", f"value-{i}-" + "x" * (i % 7)) == "OK"
            assert client.delete("key7") == "DELETED"
    elif fixture == "interior":
        with connected(LineClient, port, 1) as (client,):
            assert client.command("HIT 15") == "v1 10-20 hits=1"


def _compare(binary: Path, expected: str, *args: str) -> Snapshot:
    """Capture the stopped server both ways; check the engine and that they agree."""
    with start_server(binary, *args) as server:
        _fill(binary.parent.name, server.port)
        with stopped(server.pid, InspectOptions()) as (live, tracee, point):
            stop, frames = stop_of(live, tracee, point, False)
            fast = Capturer(live).capture(stop, frames)
            reference = Capturer(live, "the test's reference").capture(stop, frames)
        assert server.alive()
    assert fast.engine.startswith(expected), fast.engine
    assert reference.engine == "python: the test's reference"
    assert by_address(fast) == by_address(reference)
    assert fast.bytes_read == reference.bytes_read
    if fast.engine == "compiled":
        assert fast.heap is not None and len(fast.objects) == len(fast.heap)
        # The guardian's copy: raw columns, no decoded objects; decodes the same.
        copy = pickle.loads(pickle.dumps(fast, protocol=pickle.HIGHEST_PROTOCOL))
        assert by_address(copy) == by_address(reference)
    return fast


@pytest.mark.parametrize(
    ("fixture", "old", "args"), TARGETS, ids=[f"{t[0]}-{t[1]}" for t in TARGETS]
)
def test_compiled_capture_equals_reference(fixture: str, old: str, args: tuple[str, ...]) -> None:
    _compare(fixture_binary(fixture, old), EXPECTED[(fixture, old)], *args)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((), "compiled"),
        (("-DWITH_UNION",), "python: not expressible: `union either` holds a pointer"),
        (("-DLONG_STRING",), "python: declined: the string at"),
    ],
    ids=["shapes", "union", "long-string"],
)
def test_shapes(tmp_path: Path, flags: tuple[str, ...], expected: str) -> None:
    """Cycles, shared strings, pointers into strings and structs, hinted lengths from
    a sibling, a constant and a global, nested arrays of structs, function pointers,
    literals, bit-fields, unions without pointers (programs/shapes.c)."""
    binary = compile_marked(PROGRAMS / "shapes.c", tmp_path / "shapes", "-g", *flags)
    fast = _compare(binary, expected)
    if fast.engine == "compiled":
        assert len(fast.objects) > 20
        assert fast.heap is not None and any(fast.heap.target_off)  # interior pointers


@pytest.mark.parametrize(
    ("engine", "expected"),
    [("auto", "compiled"), ("python", "python: EKIDEN_TRACE_ENGINE=python")],
)
def test_attach_reports_the_capture_engine(engine: str, expected: str) -> None:
    """`attach` says which capture ran; EKIDEN_TRACE_ENGINE=python forces the reference."""
    v1, v2 = fixture_binary("kvstore", "v1"), fixture_binary("kvstore", "v2")
    xform = str(REPO / "fixtures" / "kvstore" / "xform_v1_v2.py")
    with start_server(v1) as server:
        _fill("kvstore", server.port)
        result = run_tool(
            "attach", str(server.pid), "--new", str(v2), "--xform", xform, "--json",
            env={"EKIDEN_TRACE_ENGINE": engine}, timeout=300,
        )  # fmt: skip
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode == 0, result.stderr + result.stdout
        with connected(KvClient, server.port, 1) as (client,):
            assert client.get("key3") == "value-3-xxx"
            assert client.count() == 49
    report = json.loads(result.stdout)
    assert report["outcome"] == "updated"
    assert report["capture"] == expected
