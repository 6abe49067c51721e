"""Talking to the ftpd fixture: starting it, whole pipelined sessions, logins, RETR."""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import time
from pathlib import Path

from loadgen import Shared
from procs import BenchServer, start_server

MAX_PER_IP = 1_000_000  # no per-address limit gets in the way of the load
# One session, sent in one write right after connecting (the server reads
# commands from a buffer, so it may pipeline): a login and ten commands.
SESSION = [
    "USER anonymous",
    "PASS bench@example.org",
    "SYST",
    "PWD",
    "TYPE I",
    "SIZE /small.txt",
    "CWD /",
    "NOOP",
    "PWD",
    "NOOP",
    "QUIT",
]
SESSION_BYTES = "".join(line + "\r\n" for line in SESSION).encode()


def start(binary: Path, root: Path) -> BenchServer:
    """An ftpd listener serving root, with no per-address connection limit."""
    return start_server(binary, str(root), "-", str(MAX_PER_IP))


def make_root(root: Path, big_bytes: int) -> Path:
    """Fill root with small.txt and big.bin (big_bytes of varied bytes); return big.bin."""
    (root / "small.txt").write_text("hello\n")
    big = root / "big.bin"
    block = os.urandom(1 << 20)
    with big.open("wb") as f:
        for _ in range(big_bytes // len(block)):
            f.write(block)
    return big


def login(port: int, listener: int) -> tuple[Control, int]:
    """A logged-in control connection and the pid of the session serving it."""
    from ftp_helpers import children, zombies  # tests/ftp_helpers.py comes with fixtures/ftpd

    def live() -> set[int]:
        pids = children(listener)
        return set(pids) - set(zombies(pids))

    before = live()
    ctl = Control(port)
    try:
        ctl.login()
        new = live() - before
        if len(new) != 1:
            raise RuntimeError(f"cannot tell which of {sorted(new)} serves the new session")
    except BaseException:
        ctl.close()
        raise
    return ctl, new.pop()


class Control:
    """A control connection: one command, one final reply line (multi-line replies skipped)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.greeting = self.reply()

    def _line(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("ftpd closed the control connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode(errors="replace")

    def reply(self) -> str:
        """The next final reply line ('NNN text')."""
        while True:
            line = self._line()
            if len(line) >= 4 and line[:3].isdigit() and line[3] == " ":
                return line

    def command(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def login(self) -> None:
        self.command("USER anonymous")
        reply = self.command("PASS bench@example.org")
        if not reply.startswith("230"):
            raise RuntimeError(f"ftpd login failed: {reply}")

    def close(self) -> None:
        self.sock.close()


def _pasv_port(reply: str) -> int:
    numbers = reply[reply.index("(") + 1 : reply.index(")")].split(",")
    return int(numbers[4]) * 256 + int(numbers[5])


def retr(ctl: Control, name: str, buf: bytearray) -> tuple[int, float, float]:
    """RETR name over a PASV connection: bytes received, seconds from RETR to the data's
    end, and the CPU seconds this client thread spent receiving them."""
    ctl.command("TYPE I")
    data = socket.create_connection(("127.0.0.1", _pasv_port(ctl.command("PASV"))), timeout=30)
    view = memoryview(buf)
    received = 0
    try:
        started, cpu = time.monotonic(), time.thread_time()
        ctl.sock.sendall(f"RETR {name}\r\n".encode())
        while n := data.recv_into(view):
            received += n
        seconds, cpu = time.monotonic() - started, time.thread_time() - cpu
    finally:
        data.close()
    reply = ctl.reply()
    while reply.startswith("1"):  # 150 Opening ..., then the outcome
        reply = ctl.reply()
    if not reply.startswith("226"):
        raise RuntimeError(f"RETR {name} failed: {reply}")
    return received, seconds, cpu


def session_worker(shared: Shared, port: int, concurrent: int) -> None:
    """While the generator runs, keep `concurrent` whole sessions (SESSION, pipelined)
    going; count the finished ones."""
    sel = selectors.DefaultSelector()
    got: dict[socket.socket, bytearray] = {}
    shared.ready()
    total = 0
    while not shared.stopping():
        while shared.running() and len(got) < concurrent:
            s = socket.socket()
            s.setblocking(False)
            if s.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
                raise ConnectionError("cannot connect to ftpd")
            got[s] = bytearray()
            sel.register(s, selectors.EVENT_WRITE)
        for key, events in sel.select(0.05 if got else 0.005):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if events & selectors.EVENT_WRITE:
                s.sendall(SESSION_BYTES)  # small: fits the socket buffer at once
                sel.modify(s, selectors.EVENT_READ)
                continue
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                got[s] += chunk
                continue
            if b"\r\n221 " not in got.pop(s):
                raise RuntimeError("an ftpd session ended without its 221 reply")
            sel.unregister(s)
            s.close()
            total += 1
            shared.done(total)
    for s in got:
        with contextlib.suppress(OSError):
            s.close()
    sel.close()
