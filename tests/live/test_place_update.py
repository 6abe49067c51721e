"""An update of kvstore whose heap goes through the compiled restore, end to end.

The compiled capture does not fill `Snapshot.heap` yet, so the update runs in this
process with its capture wrapped: the reference snapshot's heap is given as columns,
read from v1 while it is stopped for the update (tests/placing.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from clients import LineClient, fixture_binary, start_server
from conftest import REPO, needs_ptrace
from placing import columns_of

from ekiden_trace.faults import ENV as FAULT_ENV
from ekiden_trace.ops import update as update_op
from ekiden_trace.ops.update import RolledBack
from ekiden_trace.state.encode import Encoder

pytestmark = needs_ptrace

KEYS = 20_000


@pytest.mark.parametrize("fault", [None, "restore-write"], ids=["updated", "rolled-back"])
def test_kvstore_update_through_the_compiled_restore_keeps_every_key(
    monkeypatch: pytest.MonkeyPatch, fault: str | None
) -> None:
    """Updated, or rolled back to v1 (the identity recipes restore it), every key reads
    back with its value."""
    v1, v2 = fixture_binary("kvstore", "v1"), fixture_binary("kvstore", "v2")
    xform = REPO / "fixtures" / "kvstore" / "xform_v1_v2.py"
    captured: list[int] = []
    placed: list[bool] = []
    capture = update_op._capture

    def with_columns(*args: Any) -> Any:
        snapshot = capture(*args)
        snapshot.heap = columns_of(snapshot, args[2].old)
        captured.append(len(snapshot.objects))
        return snapshot

    place = Encoder._place

    def recording(encoder: Encoder, found: list[Any]) -> bool:
        placed.append(place(encoder, found))
        return placed[-1]

    monkeypatch.setattr(update_op, "_capture", with_columns)
    monkeypatch.setattr(Encoder, "_place", recording)
    monkeypatch.setenv("EKIDEN_TRACE_ENGINE", "compiled")
    if fault:
        monkeypatch.setenv(FAULT_ENV, fault)
    values = [f"value-{i}-{'x' * (i % 50)}" for i in range(KEYS)]
    with start_server(v1) as server:
        with LineClient(server.port) as client:
            assert set(client.pipeline([f"SET key{i} {v}" for i, v in enumerate(values)])) == {"OK"}
        options = update_op.UpdateOptions(new=str(v2), xform=str(xform))
        if fault:
            with pytest.raises(RolledBack):
                update_op.update(server.pid, options)
        else:
            report = update_op.update(server.pid, options)
            assert report.outcome == "updated"
            assert report.objects == captured[0] == 3 * KEYS + 2
        assert placed == [True]
        with LineClient(server.port) as client:
            gets = client.pipeline([f"GET key{i}" for i in range(KEYS)])
        assert gets == [f"VALUE {v}" for v in values]
        assert server.alive()
