"""50 consecutive updates under load (the 500-update soak is `make soak`)."""

from __future__ import annotations

from conftest import needs_ptrace
from soak import soak

pytestmark = needs_ptrace


def test_fifty_updates_under_load_lose_nothing() -> None:
    figures = soak(50)
    assert figures["failed_updates"] == [] and figures["updates"] == 50
    assert figures["failed_requests"] == 0, figures["failures"]
    assert figures["keys_lost"] == 0
    assert figures["server_alive"]
    before, after = figures["before"], figures["after"]
    assert after["fds"] == before["fds"]
    assert after["mappings"] <= before["mappings"] + 2
    assert after["rss_kb"] <= before["rss_kb"] * 1.5 + 1024
