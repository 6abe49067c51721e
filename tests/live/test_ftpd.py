"""fixtures/ftpd's own behaviour, without ekiden-trace: real processes, ftplib and curl.

ftpd is the forking FTP server of the vsftpd case study: a listener that forks one
session process per connection and keeps pid -> address and address -> count
tables, in three versions (v2 adds FEAT and a session field, v3 keys the tables
by 16-byte addresses).  Each test runs its own servers and kills their whole
process tree on the way out.
"""

from __future__ import annotations

import ftplib
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from clients import TIMEOUT, fixture_binary
from ftp_helpers import (
    NOTE_FROM,
    NOTE_HINT,
    NOTE_TAG,
    SECRET,
    SMALL,
    UPDATE_POINTS,
    USERS,
    VERSIONS,
    big_data,
    build,
    connect,
    ekiden_notes,
    global_functions,
    listing,
    login,
    make_root,
    multiline,
    readelf_update_points,
    retr,
    running_ftpd,
    session,
    stor,
    wait_until,
    write_userfile,
    zombies,
)

TAGS = {"listen_fd", "num_children", "pid_to_addr", "addr_to_count", "max_per_ip", "sess"}
TAGS |= {"priv_child"}  # FTPD_CHROOT_SESSIONS: a privileged session's chrooted child
TAGS |= {"accounts", "naccounts"}  # USERFILE's, read by a fresh start only
FROM_MARKS = {"prelogin_loop", "postlogin_loop", "priv_loop"}
HINTS = {
    ("array", "struct hash", "buckets", "nbuckets"),
    ("buffer", "struct hash_node", "key", "key_size"),
    ("buffer", "struct hash_node", "value", "value_size"),
    ("array", "", "accounts", "naccounts"),
}


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path)


@pytest.fixture
def userfile(tmp_path):
    return write_userfile(tmp_path / "users")


def raw_reply(sock: socket.socket) -> str:
    """One reply line read from a raw control connection."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data.decode().rstrip("\r\n")


def at_eof(sock: socket.socket) -> bool:
    """Whether the server closed the connection (a reset, if it left input unread)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# ---- building and marks ----


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "flags", [("-O0",), ("-O2",), ("-O3",), ("-O2", "-DEKIDEN_DISABLE")], ids=" ".join
)
def test_builds_without_warnings(version, flags, tmp_path):
    result = build(version, tmp_path / version, *flags)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("version", VERSIONS)
def test_readelf_shows_the_update_points(version, tmp_path):
    binary = tmp_path / version
    assert build(version, binary, "-O2").returncode == 0
    assert readelf_update_points(binary) == UPDATE_POINTS


@pytest.mark.parametrize("version", VERSIONS)
def test_tags_from_marks_and_hints(version, tmp_path):
    binary = tmp_path / version
    assert build(version, binary, "-O2").returncode == 0
    assert {r[0] for r in ekiden_notes(binary, NOTE_TAG)} == TAGS
    assert {r[0] for r in ekiden_notes(binary, NOTE_FROM)} == FROM_MARKS
    assert {tuple(r[:4]) for r in ekiden_notes(binary, NOTE_HINT)} == HINTS


def test_v3_exports_what_a_transformer_calls(tmp_path):
    binary = tmp_path / "v3"
    assert build("v3", binary, "-O2").returncode == 0
    assert {"hash_new", "hash_add", "hash_pid", "hash_addr"} <= global_functions(binary)


def test_unmarked_build_serves(root, tmp_path):
    binary = tmp_path / "ftpd"
    result = build("v1", binary, "-O2", "-DEKIDEN_DISABLE")
    assert result.returncode == 0, result.stderr
    assert readelf_update_points(binary) == set()
    with running_ftpd("v1", root, binary=binary) as server, session(server.port) as ftp:
        assert retr(ftp, "pub/small.txt") == SMALL


def test_usage_errors(root):
    binary = fixture_binary("ftpd", "v1")
    for args in (
        [],
        ["0"],
        ["x", str(root)],
        ["0", str(root / "missing")],
        ["0", str(root), "-", "x"],
    ):
        result = subprocess.run(
            [str(binary), *args], capture_output=True, text=True, timeout=TIMEOUT
        )
        assert result.returncode != 0, args
        assert result.stdout == ""
        assert result.stderr != ""


# ---- login ----


@pytest.mark.parametrize("version", VERSIONS)
def test_greeting_says_the_version(version, root):
    with running_ftpd(version, root) as server:
        ftp = connect(server.port)
        try:
            assert ftp.getwelcome() == f"220 ftpd {version} ready."
        finally:
            ftp.close()


@pytest.mark.parametrize("user", ["anonymous", "ftp", "Anonymous"])
def test_anonymous_login_with_any_password(user, root):
    with running_ftpd("v1", root) as server, session(server.port, user, "x@y") as ftp:
        assert ftp.pwd() == "/"


@pytest.mark.parametrize("version", VERSIONS)
def test_login_from_the_user_file(version, root, userfile):
    with running_ftpd(version, root, userfile=userfile) as server:
        for user, password in USERS.items():
            ftp = connect(server.port)
            try:
                reply = ftp.login(user, password)
                assert reply.startswith("230 ")
                assert f"Logged in as {user}" in ftp.sendcmd("STAT")
            finally:
                ftp.close()


def test_bad_logins_are_refused(root, userfile):
    with running_ftpd("v1", root, userfile=userfile) as server:
        ftp = connect(server.port)
        try:
            with pytest.raises(ftplib.error_perm, match=r"^530"):
                ftp.login("alice", "wrong")
            with pytest.raises(ftplib.error_perm, match=r"^530"):
                ftp.login("mallory", "wonderland")
            with pytest.raises(ftplib.error_perm, match=r"^503"):
                ftp.sendcmd("PASS wonderland")  # no USER since the failure
            assert ftp.login("alice", "wonderland").startswith("230 ")
            with pytest.raises(ftplib.error_perm, match=r"^530"):
                ftp.sendcmd("USER bob")  # no changing users
        finally:
            ftp.close()


def test_without_a_user_file_only_anonymous(root):
    with running_ftpd("v1", root) as server:
        ftp = connect(server.port)
        try:
            with pytest.raises(ftplib.error_perm, match=r"^530"):
                ftp.login("alice", "wonderland")
        finally:
            ftp.close()


def test_commands_need_login(root):
    with running_ftpd("v1", root) as server:
        ftp = connect(server.port)
        try:
            for command in ("PWD", "CWD pub", "PASV", "LIST", "RETR top.txt", "SIZE top.txt"):
                with pytest.raises(ftplib.error_perm, match=r"^530"):
                    ftp.sendcmd(command)
            assert ftp.sendcmd("NOOP").startswith("200")
            assert ftp.sendcmd("SYST") == "215 UNIX Type: L8"
        finally:
            ftp.close()


# ---- directories and paths ----


@pytest.mark.parametrize("version", VERSIONS)
def test_pwd_cwd_cdup(version, root):
    with running_ftpd(version, root) as server, session(server.port) as ftp:
        assert ftp.pwd() == "/"
        assert ftp.cwd("pub").startswith("250")
        assert ftp.pwd() == "/pub"
        ftp.cwd("docs")
        assert ftp.pwd() == "/pub/docs"
        ftp.cwd("..")  # ftplib sends CDUP
        assert ftp.pwd() == "/pub"
        assert ftp.sendcmd("CDUP").startswith("250")
        assert ftp.pwd() == "/"
        ftp.cwd("/pub/./docs/")
        assert ftp.pwd() == "/pub/docs"
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.cwd("/nowhere")
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.cwd("/top.txt")
        assert ftp.pwd() == "/pub/docs"


@pytest.mark.parametrize("version", VERSIONS)
def test_dot_dot_cannot_leave_the_root(version, root):
    with running_ftpd(version, root) as server, session(server.port) as ftp:
        ftp.cwd("../../../..")
        assert ftp.pwd() == "/"
        ftp.sendcmd("CDUP")
        assert ftp.pwd() == "/"
        ftp.cwd("pub")
        ftp.cwd("../../../pub")
        assert ftp.pwd() == "/pub"
        # secret.txt is next to the root: every way up ends at the root.
        for path in (
            "../secret.txt",
            "../../secret.txt",
            "/../secret.txt",
            "/pub/../../secret.txt",
        ):
            with pytest.raises(ftplib.error_perm, match=r"^550"):
                retr(ftp, path)
            with pytest.raises(ftplib.error_perm, match=r"^550"):
                ftp.size(path)
        assert sorted(ftp.nlst("/..")) == ["escape", "incoming", "pub", "top.txt"]
        assert retr(ftp, "../../top.txt") == b"top\n"


def test_symbolic_links_cannot_leave_the_root(root):
    with running_ftpd("v1", root) as server, session(server.port) as ftp:
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            retr(ftp, "/escape/secret.txt")
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.cwd("/escape")
        with pytest.raises(ftplib.error_perm, match=r"^553"):
            stor(ftp, "/escape/planted.txt", b"x")
    assert (root.parent / "secret.txt").read_bytes() == SECRET
    assert not (root.parent / "planted.txt").exists()


# ---- transfers ----


@pytest.mark.parametrize("version", VERSIONS)
def test_type(version, root):
    with running_ftpd(version, root) as server, session(server.port) as ftp:
        assert ftp.sendcmd("TYPE I") == "200 Switching to Binary mode."
        assert "TYPE: BINARY" in ftp.sendcmd("STAT")
        assert ftp.sendcmd("TYPE A") == "200 Switching to ASCII mode."
        assert "TYPE: ASCII" in ftp.sendcmd("STAT")
        with pytest.raises(ftplib.error_perm, match=r"^504"):
            ftp.sendcmd("TYPE E")


@pytest.mark.parametrize("version", VERSIONS)
def test_pasv_list_and_nlst(version, root):
    with running_ftpd(version, root) as server, session(server.port) as ftp:
        reply = ftp.sendcmd("PASV")
        assert reply.startswith("227 Entering Passive Mode (127,0,0,1,")
        assert sorted(ftp.nlst()) == ["escape", "incoming", "pub", "top.txt"]
        assert sorted(ftp.nlst("pub")) == ["big.bin", "docs", "small.txt"]
        lines = listing(ftp, "pub")
        by_name = {line.split()[-1]: line for line in lines}
        assert set(by_name) == {"big.bin", "docs", "small.txt"}
        assert by_name["docs"].startswith("d")
        assert by_name["small.txt"].startswith("-rw")
        assert by_name["small.txt"].split()[4] == str(len(SMALL))
        assert listing(ftp, "pub/small.txt")[0].split()[-1] == "small.txt"
        assert listing(ftp, "-la /pub/docs") == []
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            listing(ftp, "/nowhere")


def test_transfer_without_pasv_is_refused(root):
    with running_ftpd("v1", root) as server, session(server.port) as ftp:
        for command in ("RETR top.txt", "STOR new.txt", "LIST", "NLST"):
            with pytest.raises(ftplib.error_temp, match=r"^425"):
                ftp.sendcmd(command)


@pytest.mark.parametrize("version", VERSIONS)
def test_retr_is_byte_exact(version, root):
    big = big_data()
    with running_ftpd(version, root) as server, session(server.port) as ftp:
        assert retr(ftp, "pub/small.txt") == SMALL
        assert retr(ftp, "/pub/big.bin") == big
        ftp.cwd("pub")
        assert retr(ftp, "small.txt") == SMALL
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            retr(ftp, "missing.bin")
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            retr(ftp, "docs")
        stat = ftp.sendcmd("STAT")
        assert f"Bytes sent: {2 * len(SMALL) + len(big)}" in stat


@pytest.mark.parametrize("version", VERSIONS)
def test_rest_resumes_retr(version, root):
    big = big_data()
    with running_ftpd(version, root) as server, session(server.port) as ftp:
        for offset in (0, 1, 65535, 65536, 3_000_001, len(big) - 1, len(big)):
            assert retr(ftp, "pub/big.bin", rest=offset) == big[offset:], offset
        assert ftp.sendcmd("REST 4") == "350 Restart position accepted (4)."
        assert retr(ftp, "pub/small.txt") == SMALL[4:]
        assert retr(ftp, "pub/small.txt") == SMALL  # REST holds for one transfer
        for bad in ("REST -1", "REST x", "REST 1x"):
            with pytest.raises(ftplib.error_perm, match=r"^501"):
                ftp.sendcmd(bad)


@pytest.mark.parametrize("version", VERSIONS)
def test_stor(version, root, userfile):
    data = bytes(range(256)) * 1000 + b"\r\n\0end"
    with (
        running_ftpd(version, root, userfile=userfile) as server,
        session(server.port, "bob", USERS["bob"]) as ftp,
    ):
        assert stor(ftp, "incoming/up.bin", data) == "226 Transfer complete."
        assert (root / "incoming" / "up.bin").read_bytes() == data
        assert retr(ftp, "/incoming/up.bin") == data
        ftp.cwd("incoming")
        assert stor(ftp, "up.bin", b"shorter") == "226 Transfer complete."
        assert (root / "incoming" / "up.bin").read_bytes() == b"shorter"
        assert f"Bytes received: {len(data) + 7}" in ftp.sendcmd("STAT")
        with pytest.raises(ftplib.error_perm, match=r"^553"):
            stor(ftp, "/nowhere/up.bin", data)
        with pytest.raises(ftplib.error_perm, match=r"^553"):
            stor(ftp, "/pub", data)


@pytest.mark.parametrize("version", VERSIONS)
def test_size(version, root):
    with running_ftpd(version, root) as server, session(server.port) as ftp:
        assert ftp.size("pub/small.txt") == len(SMALL)
        assert ftp.sendcmd("SIZE /pub/big.bin") == f"213 {len(big_data())}"
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.size("pub/docs")
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.size("missing")


@pytest.mark.parametrize("version", VERSIONS)
def test_stat(version, root):
    with running_ftpd(version, root) as server, session(server.port) as ftp:
        ftp.cwd("pub")
        ftp.sendcmd("TYPE I")
        lines = multiline(ftp.sendcmd("STAT"))
        assert lines[0] == "211-FTP server status:"
        assert lines[-1] == "211 End of status"
        body = [line.strip() for line in lines[1:-1]]
        assert f"ftpd version {version[1:]}" in body
        assert "Connected to 127.0.0.1" in body
        assert "Logged in as anonymous" in body
        assert "Current directory: /pub" in body
        assert "Bytes sent: 0" in body
        if version == "v1":
            assert not any(line.startswith("Commands") for line in body)
        else:
            # USER, PASS, CWD, TYPE, STAT
            assert "Commands: 5" in body


@pytest.mark.parametrize("version", VERSIONS)
def test_noop_and_quit(version, root):
    with running_ftpd(version, root) as server:
        ftp = login(server.port)
        try:
            assert ftp.sendcmd("NOOP") == "200 NOOP ok."
            expected = "221 Goodbye." if version == "v1" else f"221 Goodbye from ftpd {version}."
            assert ftp.quit() == expected
        finally:
            ftp.close()


def test_unknown_commands(root):
    with running_ftpd("v1", root) as server, session(server.port) as ftp:
        for command in ("EPSV", "PORT 127,0,0,1,1,1", "XYZZY"):
            with pytest.raises(ftplib.error_perm, match=r"^502"):
                ftp.sendcmd(command)
        with pytest.raises(ftplib.error_perm, match=r"^501"):
            ftp.sendcmd("RETR")
        assert ftp.sendcmd("noop") == "200 NOOP ok."  # commands are not case-sensitive


@pytest.mark.parametrize("version", VERSIONS)
def test_feat(version, root):
    with running_ftpd(version, root) as server:
        ftp = connect(server.port)
        try:
            if version == "v1":
                with pytest.raises(ftplib.error_perm, match=r"^502"):
                    ftp.sendcmd("FEAT")
            else:
                lines = multiline(ftp.sendcmd("FEAT"))  # no login needed
                assert lines[0] == "211-Features:"
                assert lines[-1] == "211 End"
                assert {line.strip() for line in lines[1:-1]} == {"PASV", "REST STREAM", "SIZE"}
        finally:
            ftp.close()


def test_command_in_pieces_and_pipelined(root):
    with (
        running_ftpd("v1", root) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock,
    ):
        assert raw_reply(sock) == "220 ftpd v1 ready."
        for piece in (b"US", b"ER anony", b"mous\r", b"\n"):
            sock.sendall(piece)
        assert raw_reply(sock) == "331 Please specify the password."
        sock.sendall(b"PASS x\r\nPWD\r\nNOOP\n")  # LF alone ends a line too
        assert raw_reply(sock) == "230 Login successful."
        assert raw_reply(sock) == '257 "/" is the current directory'
        assert raw_reply(sock) == "200 NOOP ok."


def test_too_long_a_line_closes(root):
    with (
        running_ftpd("v1", root) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock,
    ):
        raw_reply(sock)
        sock.sendall(b"NOOP " + b"x" * 2000)
        assert raw_reply(sock) == "500 Command line too long."
        assert at_eof(sock)


# ---- curl ----


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return subprocess.run(
        ["curl", "-s", "-S", "--max-time", "20", *args], capture_output=True, timeout=30
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_curl_download(version, root):
    with running_ftpd(version, root) as server:
        url = f"ftp://127.0.0.1:{server.port}"
        result = curl(f"{url}/pub/small.txt")
        assert result.returncode == 0, result.stderr
        assert result.stdout == SMALL
        result = curl(f"{url}/pub/big.bin")
        assert result.returncode == 0, result.stderr
        assert result.stdout == big_data()
        result = curl("-C", "1000", f"{url}/pub/big.bin")  # REST
        assert result.returncode == 0, result.stderr
        assert result.stdout == big_data()[1000:]
        result = curl(f"{url}/pub/")
        assert result.returncode == 0, result.stderr
        assert {line.split()[-1] for line in result.stdout.decode().splitlines()} == {
            "big.bin",
            "docs",
            "small.txt",
        }


@pytest.mark.parametrize("version", VERSIONS)
def test_curl_upload(version, root, userfile, tmp_path):
    data = big_data()[:300_000]
    source = tmp_path / "upload.bin"
    source.write_bytes(data)
    with running_ftpd(version, root, userfile=userfile) as server:
        url = f"ftp://127.0.0.1:{server.port}/incoming/upload.bin"
        result = curl("-u", f"alice:{USERS['alice']}", "-T", str(source), url)
        assert result.returncode == 0, result.stderr
        assert (root / "incoming" / "upload.bin").read_bytes() == data
        result = curl("-u", "alice:wrong", "-T", str(source), url)
        assert result.returncode == 67  # login denied


# ---- processes ----


@pytest.mark.parametrize("version", VERSIONS)
def test_one_session_process_per_connection_reaped_after_quit(version, root):
    with running_ftpd(version, root) as server:
        clients = [login(server.port) for _ in range(3)]
        try:
            sessions = server.sessions()
            assert len(sessions) == 3
            listener_argv = Path(f"/proc/{server.pid}/cmdline").read_bytes()
            assert all(
                Path(f"/proc/{pid}/cmdline").read_bytes() == listener_argv for pid in sessions
            )
            assert clients[0].quit().startswith("221")
            wait_until(lambda: len(server.sessions()) == 2, "the session to be reaped")
            clients[1].close()  # no QUIT: the session sees EOF
            wait_until(lambda: len(server.sessions()) == 1, "the session to be reaped")
            assert zombies(server.sessions()) == []
        finally:
            for client in clients:
                client.close()
        wait_until(lambda: server.sessions() == [], "every session to be reaped")
        assert server.alive()


@pytest.mark.parametrize("version", VERSIONS)
def test_per_address_limit(version, root):
    with running_ftpd(version, root, max_per_ip=2) as server:
        first, second = connect(server.port), connect(server.port)
        try:
            with pytest.raises(ftplib.error_temp) as refused:
                connect(server.port)
            assert str(refused.value) == "421 Too many connections from your address"
            assert len(server.sessions()) == 2
            first.quit()
            wait_until(lambda: len(server.sessions()) == 1, "the session to be reaped")
            third = connect(server.port)  # the count went down with the reaped child
            try:
                with pytest.raises(ftplib.error_temp, match=r"^421"):
                    connect(server.port)
            finally:
                third.close()
        finally:
            first.close()
            second.close()


def test_default_limit_is_five(root):
    with running_ftpd("v1", root) as server:
        clients = [connect(server.port) for _ in range(5)]
        try:
            with pytest.raises(ftplib.error_temp, match=r"^421"):
                connect(server.port)
        finally:
            for client in clients:
                client.close()


def test_a_session_survives_its_listener(root):
    """Sessions are processes of their own: killing the listener leaves them serving."""
    with running_ftpd("v1", root) as server, session(server.port) as ftp:
        assert len(server.sessions()) == 1
        server.proc.kill()
        server.proc.wait(timeout=TIMEOUT)
        assert retr(ftp, "top.txt") == b"top\n"
        assert ftp.quit() == "221 Goodbye."
