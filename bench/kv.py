"""Talking to the kvstore fixture in bulk: loading keys and building request batches."""

from __future__ import annotations

import random
import socket

LOAD_BATCH = 2000  # SETs per pipelined write while loading


def key(i: int) -> bytes:
    return b"key%08d" % i


def value(i: int, length: int) -> bytes:
    """A printable value of `length` bytes, different for each key."""
    head = b"v%d-" % i
    return (head + b"x" * length)[:length]


class _Replies:
    """Counts the reply lines of one connection as they arrive."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = 0

    def wait_for(self, total: int) -> None:
        """Read until `total` replies in all have arrived; all must be OK (a SET's only
        other answers start with ERR)."""
        while self.received < total:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("kvstore closed the connection while loading")
            if b"E" in chunk:
                raise RuntimeError(f"kvstore refused a SET: {chunk[-80:]!r}")
            self.received += chunk.count(b"\n")


def load(port: int, count: int, value_len: int, start: int = 0) -> None:
    """SET keys start..start+count-1 with value_len-byte values, in large pipelined batches,
    each sent before the replies to the one before are read: the server never waits for
    the client, nor for a delayed ACK at the end of a batch."""
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        replies = _Replies(sock)
        sent = 0
        for first in range(start, start + count, LOAD_BATCH):
            last = min(first + LOAD_BATCH, start + count)
            lines = (b"SET %s %s\n" % (key(i), value(i, value_len)) for i in range(first, last))
            sock.sendall(b"".join(lines))
            replies.wait_for(sent)  # all but this batch
            sent += last - first
        replies.wait_for(sent)


def count(port: int) -> int:
    """The server's COUNT."""
    from clients import KvClient  # tests/ is on sys.path once procs is imported

    with KvClient(port, timeout=30) as client:
        return client.count()


def request_batch(nkeys: int, size: int, value_len: int, set_share: float = 0.1) -> bytes:
    """`size` requests over keys 0..nkeys-1: GETs, and SETs for a `set_share` of them."""
    rnd = random.Random(5)
    lines = []
    for _ in range(size):
        i = rnd.randrange(nkeys)
        if rnd.random() < set_share:
            lines.append(b"SET %s %s\n" % (key(i), value(i, value_len)))
        else:
            lines.append(b"GET %s\n" % key(i))
    return b"".join(lines)
