"""Mark a server, then update it while a client stays connected.

Builds marking/greeter_v1.c and marking/greeter_v2.c into a temporary
directory with `cc $(ekiden-trace cflags) -g -O2`, starts v1, greets twice
from one connected client, runs `ekiden-trace attach PID --new greeter_v2`,
and greets again on the same connection: v2 answers, and its greeting count
goes on from v1's.

    python examples/update_greeter.py      (as root, or where ptrace is allowed)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from build_and_run import build, ekiden_trace

SOURCES = Path(__file__).resolve().parent / "marking"


def greet(client: socket.socket, name: str) -> str:
    """Send a name, return the server's one-line answer."""
    client.sendall(name.encode() + b"\n")
    return client.makefile().readline().rstrip("\n")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        v1, v2 = (
            build(SOURCES / "greeter_v1.c", Path(tmp)),
            build(SOURCES / "greeter_v2.c", Path(tmp)),
        )
        server = subprocess.Popen([v1, "0"], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline().split()[-1])  # "listening on PORT"
            print(f"started greeter v1, pid {server.pid}, port {port}")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                print("client:", greet(client, "ada"))
                print("client:", greet(client, "grace"))

                update = ekiden_trace("attach", str(server.pid), "--new", str(v2))
                print(f"$ ekiden-trace attach {server.pid} --new greeter_v2")
                print(update.stdout + update.stderr, end="")
                if update.returncode != 0:
                    return update.returncode

                print("client:", greet(client, "linus"))  # same connection, now v2
            print(f"pid {server.pid} is still running: {server.poll() is None}")
        finally:
            server.kill()
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
