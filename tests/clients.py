"""Helpers for tests: build and start fixture servers, and talk to them.

Every socket has a timeout, so a server that stops answering fails the test
instead of hanging it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import subprocess
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 5.0


class ProtocolError(Exception):
    """A server answered something its protocol does not allow."""


def fixture_binary(name: str, version: str) -> Path:
    """Path of fixtures/<name>/<version>, built by `make fixtures` if missing or stale.

    version is a binary's name, such as "v1" (from v1.c) or "v1-unmarked".
    """
    binary = REPO / "fixtures" / name / version
    sources = [binary.with_name(version.partition("-")[0] + ".c"), REPO / "probes" / "ekiden.h"]
    if not binary.exists() or any(
        source.exists() and source.stat().st_mtime > binary.stat().st_mtime for source in sources
    ):
        subprocess.run(["make", "-C", str(REPO), "fixtures"], check=True, stdout=subprocess.DEVNULL)
    if not binary.exists():
        raise FileNotFoundError(f"`make fixtures` did not build {binary}")
    return binary


def build_fixture(
    name: str, version: str, out: Path, *flags: str, compiler: str = "gcc"
) -> subprocess.CompletedProcess[str]:
    """Compile fixtures/<name>/<version>.c with the Makefile's flags (warnings shown, not
    fatal) and flags after -g; the compiler's result, output captured."""
    return subprocess.run(
        [
            compiler, "-std=c99", "-D_GNU_SOURCE", "-g", *flags,
            "-Wall", "-Wextra", "-I", "probes",
            f"fixtures/{name}/{version}.c", "-o", os.fspath(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )  # fmt: skip


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running fixture process.  Its stdout lines are collected in `output`."""

    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        # Drain stdout all along, so a chatty server never blocks on a full pipe.
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for_line(self, prefix: str, timeout: float = TIMEOUT) -> str:
        """The next stdout line starting with prefix; fails if the process exits first."""
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"pid {self.pid}: no {prefix!r} line in {timeout} s") from None
            if line is None:
                code = self.proc.wait()
                raise RuntimeError(f"pid {self.pid} exited ({code}) before printing {prefix!r}")
            if line.startswith(prefix):
                return line

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Kill the process and reap it; harmless if it is already gone."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        self._reader.join(timeout=TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    binary: Path, *args: str, port: int | None = None, own_group: bool = False
) -> Server:
    """Start binary with the port as argv[1] and wait until it says it listens.

    `own_group` starts it in a process group of its own, as a shell's job control
    does: the kernel discards SIGTSTP sent to a process of an orphaned group, which
    the test runner's group may be (a CI job started in the background).
    """
    if port is None:
        port = free_port()
    proc = subprocess.Popen(
        [os.fspath(binary), str(port), *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        process_group=0 if own_group else None,
    )
    server = Server(proc, port)
    try:
        line = server.wait_for_line("listening on")
    except BaseException:
        server.stop()
        raise
    if line != f"listening on {port}":
        server.stop()
        raise RuntimeError(f"pid {server.pid}: expected to listen on {port}, said {line!r}")
    return server


class LineClient:
    """A TCP client of a line-based protocol: one reply line per request line."""

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buf = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> str:
        """The next line from the server, without its newline."""
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def command(self, line: str) -> str:
        """Send one line and return the reply line."""
        self.send_raw(line.encode() + b"\n")
        return self.read_line()

    def pipeline(self, lines: list[str]) -> list[str]:
        """Send all lines at once, then read one reply for each."""
        self.send_raw(b"".join(line.encode() + b"\n" for line in lines))
        return [self.read_line() for _ in lines]

    def at_eof(self) -> bool:
        """Whether the server has closed the connection, with nothing left to read.

        A server that closes with unread input resets the connection: that counts too.
        """
        if self._buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CounterClient(LineClient):
    """Client of fixtures/counter."""

    def send(self, line: str) -> str:
        return self.command(line)


class KvClient(LineClient):
    """Client of fixtures/kvstore."""

    def set(self, key: str, value: str) -> str:
        """'OK', or the server's error line."""
        return self.command(f"SET {key} {value}")

    def get(self, key: str) -> str | None:
        """The value, or None if the key is not there."""
        reply = self.command(f"GET {key}")
        if reply == "NOTFOUND":
            return None
        if reply.startswith("VALUE "):
            return reply.removeprefix("VALUE ")
        raise ProtocolError(f"GET {key}: {reply!r}")

    def delete(self, key: str) -> str:
        """'DELETED', 'NOTFOUND', or the server's error line."""
        return self.command(f"DEL {key}")

    def hits(self, key: str) -> int | None:
        """kvstore v2 and later: the GETs that found key, or None if it is not there."""
        reply = self.command(f"HITS {key}")
        if reply == "NOTFOUND":
            return None
        word, _, n = reply.partition(" ")
        if word != "HITS" or not n.isdigit():
            raise ProtocolError(f"HITS {key}: {reply!r}")
        return int(n)

    def count(self) -> int:
        reply = self.command("COUNT")
        word, _, n = reply.partition(" ")
        if word != "COUNT" or not n.isdigit():
            raise ProtocolError(f"COUNT: {reply!r}")
        return int(n)

    def stats(self) -> dict[str, int | str]:
        """The STATS fields, numbers as int."""
        reply = self.command("STATS")
        word, *fields = reply.split(" ")
        if word != "STATS":
            raise ProtocolError(f"STATS: {reply!r}")
        stats: dict[str, int | str] = {}
        for field in fields:
            key, _, value = field.partition("=")
            stats[key] = int(value) if value.isdigit() else value
        return stats

    def mode(self, mode: str) -> str:
        """'OK', or the server's error line."""
        return self.command(f"MODE {mode}")

    def quit(self) -> str:
        return self.command("QUIT")


@contextlib.contextmanager
def connected(client_class: type[LineClient], port: int, count: int):
    """count clients of client_class, all closed on exit."""
    clients = []
    try:
        for _ in range(count):
            clients.append(client_class(port))
        yield clients
    finally:
        for client in clients:
            client.close()


def code_bytes(pid: int) -> bytes:
    """The contents of every executable file mapping of a process."""
    chunks = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
        for line in maps:
            fields = line.split()
            if "x" in fields[1] and len(fields) > 5 and fields[5].startswith("/"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                mem.seek(start)
                chunks.append(mem.read(end - start))
    return b"".join(chunks)
