"""Helpers for tests of fixtures/ftpd: a served directory, the server, ftplib clients, processes.

The server forks one session process per connection, so it is started in a session
(and process group) of its own, and stopping it kills that whole group and every
process of its tree.
"""

from __future__ import annotations

import contextlib
import ftplib
import io
import os
import random
import re
import signal
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from clients import TIMEOUT, Server, build_fixture, fixture_binary, free_port
from elftools.elf.elffile import ELFFile

VERSIONS = ("v1", "v2", "v3")
UPDATE_POINTS = {"accept_loop", "prelogin_loop", "postlogin_loop", "priv_loop"}
USERS = {"alice": "wonderland", "bob": "builder"}
SMALL = b"hello, ftp\r\nsecond line\n"
BIG_SIZE = 5 * 1024 * 1024
SECRET = b"outside the root\n"


def big_data() -> bytes:
    """5 MB that do not repeat, so an offset or a lost chunk shows."""
    return random.Random(959).randbytes(BIG_SIZE)


def make_root(base: Path) -> Path:
    """A served tree under base/root, and a file beside it that must stay out of reach.

    root/top.txt, root/pub/small.txt, root/pub/big.bin (5 MB), root/pub/docs/,
    root/incoming/, root/escape -> base (a symbolic link out of the root);
    base/secret.txt is outside.
    """
    root = base / "root"
    (root / "pub" / "docs").mkdir(parents=True)
    (root / "incoming").mkdir()
    (root / "top.txt").write_bytes(b"top\n")
    (root / "pub" / "small.txt").write_bytes(SMALL)
    (root / "pub" / "big.bin").write_bytes(big_data())
    (root / "escape").symlink_to(base)
    (base / "secret.txt").write_bytes(SECRET)
    return root


def write_userfile(path: Path, users: dict[str, str] = USERS) -> Path:
    """A USERFILE of user:password lines (with a comment line, which the server skips)."""
    lines = ["# ftpd accounts"] + [f"{user}:{password}" for user, password in users.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class FtpServer(Server):
    """A running ftpd listener, leader of its own process group."""

    def stop(self) -> None:
        """Kill the listener, its sessions and anything else of its tree; reap the listener."""
        pids = process_tree(self.pid) if self.proc.poll() is None else []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        super().stop()

    def sessions(self) -> list[int]:
        """PIDs of the listener's children (its session processes), zombies included."""
        return children(self.pid)


def ftpd_command(
    binary: Path, port: int, root: Path, userfile: Path | None, max_per_ip: int | None
) -> list[str]:
    """argv of `ftpd PORT ROOT [USERFILE [MAX_PER_IP]]` ("-": no user file)."""
    argv = [os.fspath(binary), str(port), os.fspath(root), os.fspath(userfile) if userfile else "-"]
    if max_per_ip is not None:
        argv.append(str(max_per_ip))
    return argv


def start_ftpd(
    version: str,
    root: Path,
    userfile: Path | None = None,
    max_per_ip: int | None = None,
    binary: Path | None = None,
) -> FtpServer:
    """Start fixtures/ftpd/<version> (or binary) in a new session and wait until it listens."""
    if binary is None:
        binary = fixture_binary("ftpd", version)
    port = free_port()
    proc = subprocess.Popen(
        ftpd_command(binary, port, root, userfile, max_per_ip),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    server = FtpServer(proc, port)
    try:
        line = server.wait_for_line("listening on")
        if line != f"listening on {port}":
            raise RuntimeError(f"pid {server.pid}: expected to listen on {port}, said {line!r}")
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running_ftpd(version: str, root: Path, **kwargs) -> Iterator[FtpServer]:
    """start_ftpd(), and the whole process tree killed on the way out, whatever happens."""
    server = start_ftpd(version, root, **kwargs)
    try:
        yield server
    finally:
        server.stop()


# ---- processes ----


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()


def process_state(pid: int) -> str | None:
    """The one-letter state of a process (R, S, Z, ...), or None if it is gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def children(pid: int) -> list[int]:
    """PIDs whose parent is pid, zombies included, in increasing order."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry))
    return sorted(found)


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children(current))
    return tree


def zombies(pids: list[int]) -> list[int]:
    return [pid for pid in pids if process_state(pid) == "Z"]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# ---- ftplib ----


def connect(port: int) -> ftplib.FTP:
    """An ftplib client connected (greeted) but not logged in."""
    ftp = ftplib.FTP(timeout=TIMEOUT)
    ftp.connect("127.0.0.1", port)
    return ftp


def login(port: int, user: str = "anonymous", password: str = "guest@example.com") -> ftplib.FTP:
    ftp = connect(port)
    ftp.login(user, password)
    return ftp


@contextlib.contextmanager
def session(port: int, user: str = "anonymous", password: str = "guest@example.com"):
    """A logged-in ftplib client, closed (not QUIT) on the way out."""
    ftp = login(port, user, password)
    try:
        yield ftp
    finally:
        ftp.close()


def retr(ftp: ftplib.FTP, path: str, rest: int | None = None) -> bytes:
    """RETR path in binary mode (from offset rest) and return its bytes."""
    out = io.BytesIO()
    ftp.retrbinary(f"RETR {path}", out.write, rest=rest)
    return out.getvalue()


def stor(ftp: ftplib.FTP, path: str, data: bytes) -> str:
    """STOR data as path in binary mode; the final reply."""
    return ftp.storbinary(f"STOR {path}", io.BytesIO(data))


def listing(ftp: ftplib.FTP, path: str = "") -> list[str]:
    """The lines of LIST path."""
    lines: list[str] = []
    ftp.retrlines(f"LIST {path}".rstrip(), lines.append)
    return lines


def multiline(reply: str) -> list[str]:
    """The lines of a multi-line reply as ftplib returns it."""
    return reply.split("\n")


# ---- the binary ----


def build(version: str, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Compile fixtures/ftpd/<version>.c as the Makefile does, with flags after -g."""
    return build_fixture("ftpd", version, out, *flags)


def readelf_update_points(binary: Path) -> set[str]:
    """Names of the USDT probes of provider ekiden, as GNU readelf -n shows them."""
    notes = subprocess.run(
        ["readelf", "-n", os.fspath(binary)], capture_output=True, text=True, check=True
    ).stdout
    return set(re.findall(r"Provider: ekiden\s+Name: (\w+)", notes))


NOTE_TAG = 1
NOTE_FROM = 2
NOTE_HINT = 3


def ekiden_notes(binary: Path, note_type: int) -> list[list[str]]:
    """The strings of each .note.ekiden record of one type (tag: [name]; from: [point];
    hint: [kind, subject, field, arg1, arg2]), without the source file."""
    with open(binary, "rb") as f:
        section = ELFFile(f).get_section_by_name(".note.ekiden")
        data = section.data() if section is not None else b""
    records = []
    offset = 0
    while offset + 12 <= len(data):
        namesz, descsz, kind = struct.unpack_from("<III", data, offset)
        offset += 12 + ((namesz + 3) & ~3)
        desc = data[offset : offset + descsz]
        offset += (descsz + 3) & ~3
        if kind == note_type:
            _source, *strings = desc[8:].rstrip(b"\0").split(b"\0")
            records.append([s.decode() for s in strings])
    return records


def global_functions(binary: Path) -> set[str]:
    """Names of the global (exported) functions in .symtab."""
    with open(binary, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return {
            sym.name
            for sym in symtab.iter_symbols()
            if sym["st_info"]["type"] == "STT_FUNC" and sym["st_info"]["bind"] == "STB_GLOBAL"
        }
