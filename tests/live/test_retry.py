"""Servers whose blocking calls retry EINTR by themselves (vsftpd's recv_peek): the nudge
cannot bring them to their loop head, so an update point goes in the retry path."""

from __future__ import annotations

import json
from pathlib import Path

from clients import LineClient, build_fixture, fixture_binary, start_server
from conftest import REPO, needs_ptrace, run_tool

pytestmark = needs_ptrace

SOURCE = REPO / "fixtures" / "retry" / "v1.c"


def source_line(text: str) -> int:
    """The line of v1.c that holds `text`."""
    lines = SOURCE.read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


def test_point_in_the_retry_path_updates_an_idle_session() -> None:
    with start_server(fixture_binary("retry", "v1")) as server:
        with LineClient(server.port) as client:
            assert client.command("one") == "v1 #1: one"
            result = run_tool(
                "attach", str(server.pid), "--new", str(fixture_binary("retry", "v2")), "--json"
            )
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            assert report["point"] == "in_recv" and "serve:nlines" in report["moved"]
            assert client.command("two") == "v2 #2: two"  # the same session, its count kept
        with LineClient(server.port) as client:
            assert client.command("three") == "v2 #1: three"


def test_timeout_says_where_the_process_is_blocked(tmp_path: Path) -> None:
    binary = tmp_path / "retry-without-point"
    built = build_fixture("retry", "v1", binary, "-O2", "-DWITHOUT_RETRY_POINT")
    assert built.returncode == 0, built.stderr
    with start_server(binary) as server, LineClient(server.port) as client:
        assert client.command("one") == "v1 #1: one"
        new = str(fixture_binary("retry", "v2"))
        result = run_tool("attach", str(server.pid), "--new", new, "--timeout", "1")
        assert result.returncode == 4 and "Traceback" not in result.stderr
        recv_line = source_line("recv(fd, buf, len, MSG_PEEK)")
        assert "It is in " in result.stderr and "recv@libc.so.6" in result.stderr
        assert f"called from recv_peek (v1.c:{recv_line})" in result.stderr
        assert "retry path" in result.stderr
        assert client.command("two") == "v1 #2: two"  # untouched
