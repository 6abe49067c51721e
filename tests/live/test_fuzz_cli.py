"""Fuzzing the command line's inputs: damaged ELF files as --new, random transformer files,
random pids (threads of other processes included).  Every case ends with an error sentence
and a documented exit code, never a traceback, and the target serves on with its state.

The cases come from a fixed seed, so a failure is reproducible; they run in this process
(`cli.main`), so a few hundred of them take seconds.  Only processes this test started are
ever traced: a random pid is a pid nobody has, or a thread, which is refused before
anything touches it.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import KvClient, fixture_binary, start_server
from conftest import needs_ptrace, process_state, tracer_of

from ekiden_trace.cli import main

pytestmark = needs_ptrace

SEED = 12
DOCUMENTED = {1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 64, 130}
V1 = fixture_binary("kvstore", "v1")
V2 = fixture_binary("kvstore", "v2")


def run_cli(*args: str) -> tuple[int, str]:
    """Run the command line in this process: its exit code and everything it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue()


def check_outcome(args: tuple[str, ...], code: int, output: str, allowed: set[int]) -> None:
    """No traceback of the tool (a transformer's own traceback, whose frames are all in its
    file, is shown on purpose), a documented exit code, a sentence for an error."""
    if "Traceback" in output:
        frames = [line for line in output.splitlines() if line.lstrip().startswith('File "')]
        xform = args[args.index("--xform") + 1] if "--xform" in args else None
        assert xform and all(f'File "{xform}"' in frame for frame in frames), (args, output)
    assert code in allowed, (args, code, output)
    if code:
        assert output.strip(), (args, "an error without a sentence")


@pytest.fixture(scope="module")
def kvstore() -> Iterator[tuple[int, KvClient]]:
    with start_server(V1) as server, KvClient(server.port) as client:
        client.set("kept", "yes")
        yield server.pid, client


def assert_serving(pid: int, client: KvClient) -> None:
    assert client.get("kept") == "yes" and client.stats()["version"] == 1
    assert tracer_of(pid) == 0 and process_state(pid) in "SR"


# -- damaged ELF files ---------------------------------------------------------------


def damaged_elves(rng: random.Random, directory: Path, count: int) -> list[Path]:
    """Files made from v2: truncated anywhere, bytes flipped in its headers or anywhere,
    random bytes after an ELF magic."""
    data = V2.read_bytes()
    files = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            made = data[: rng.randrange(len(data))]
        elif kind == 1:
            raw = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                raw[rng.randrange(64 + 56 * 13)] = rng.randrange(256)  # ELF and program headers
            made = bytes(raw)
        elif kind == 2:
            raw = bytearray(data)
            shoff = int.from_bytes(data[0x28:0x30], "little")
            for _ in range(rng.randint(1, 8)):
                raw[rng.randrange(shoff, len(data))] = rng.randrange(256)  # section headers
            made = bytes(raw)
        else:
            made = b"\x7fELF" + rng.randbytes(rng.randrange(4096))
        path = directory / f"elf{i}"
        path.write_bytes(made)
        path.chmod(0o755)
        files.append(path)
    return files


def test_damaged_elf_files(kvstore: tuple[int, KvClient], tmp_path: Path) -> None:
    pid, client = kvstore
    rng = random.Random(SEED)
    for path in damaged_elves(rng, tmp_path, 60):
        for args in (("points", str(path)), ("diff", str(V1), str(path))):
            code, output = run_cli(*args)
            check_outcome(args, code, output, {0, 2, 9, 10})  # a flip may miss what is read
        # attach reads both binaries before it touches the process: none of these gets that far
        args = ("attach", str(pid), "--new", str(path), "--point", "nowhere")
        code, output = run_cli(*args)
        check_outcome(args, code, output, {2})
    assert_serving(pid, client)


# -- random transformer files ----------------------------------------------------------

RESULTS = [
    "None",
    "[]",
    "{}",
    "'text'",
    "b'bytes'",
    "1 << 70",
    "-1",
    "float('nan')",
    "object()",
    "[None] * 3",
    "{'nentries': 'x'}",
    "{'no_such_field': 1}",
    "ctx.new('struct nothing')",
    "ctx.new('struct entry', key=5)",
    "ctx.array('int', ['a'])",
    "ctx.string(3)",
    "old",
    "old.no_such_attribute",
    "ctx.old('nothing')",
    "1 / 0",
    "exit(3)",
]
DECORATORS = [
    '@variable("table")',
    '@variable("config")',
    '@variable("client_fds")',
    '@variable("nclients")',
    '@variable("no_such_variable")',
    '@field("struct table", "nentries")',
    '@field("struct entry", "hits")',
    '@field("struct nothing", "x")',
    '@type_("struct entry")',
    '@type_("enum mode")',
]
BROKEN_FILES = [
    "def broken(:\n",
    "raise SystemExit(3)\n",
    "import sys\nsys.exit()\n",
    "import no_such_module\n",
    "@variable()\ndef f(old, ctx):\n    return 1\n",
    "@variable(3)\ndef f(old, ctx):\n    return 1\n",
    "@field('struct table')\ndef f(old, ctx):\n    return 1\n",
    "variable('x')(None)\n",
    "def f(:\n" * 3,
    "\x00\xff",
    "import sys\nsys.setrecursionlimit(10)\n",
]
HEADER = "from ekiden_trace.xform import drop, field, type_, variable\n"


def transformer_file(rng: random.Random) -> str:
    """A random transformer file: a broken one, or a few random transformers."""
    if rng.random() < 0.3:
        return HEADER + rng.choice(BROKEN_FILES)
    parts = [HEADER]
    for i in range(rng.randint(1, 3)):
        parts.append(f"{rng.choice(DECORATORS)}\ndef t{i}(old, ctx):\n")
        parts.append(f"    return {rng.choice(RESULTS)}\n")
    return "".join(parts)


def test_random_transformer_files_in_diff(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    sources = [HEADER + broken for broken in BROKEN_FILES]
    sources += [transformer_file(rng) for _ in range(80)]
    for i, source in enumerate(sources):
        xform = tmp_path / f"x{i}.py"
        xform.write_text(source)
        args = ("diff", str(V1), str(V2), "--xform", str(xform))
        code, output = run_cli(*args)
        check_outcome(args, code, output, {0, 2, 7, 9, 10})


def test_random_transformers_run_in_an_update(tmp_path: Path) -> None:
    """Each file renames the field as v2 needs, and adds random transformers that run after
    the exec: the update is done, or rolled back with one sentence and v1 serves its state."""
    rng = random.Random(SEED)
    renamed = '@field("struct table", "nentries")\ndef nentries(old, ctx):\n    return old.count\n'
    for i in range(8):
        xform = tmp_path / f"u{i}.py"
        body = transformer_file(rng).replace(HEADER, "")
        body = body.replace('@field("struct table", "nentries")', '@field("struct entry", "hits")')
        xform.write_text(HEADER + renamed + body)
        with start_server(V1) as server, KvClient(server.port) as client:
            client.set("kept", "yes")
            args = ("attach", str(server.pid), "--new", str(V2), "--xform", str(xform))
            args += ("--allow-drop",)
            code, output = run_cli(*args)
            check_outcome(args, code, output, {0, 7, 8, 9, 10, 11})
            assert tracer_of(server.pid) == 0 and server.alive(), output
            if code:
                assert_serving(server.pid, client)


# -- random pids ---------------------------------------------------------------------------


@pytest.fixture
def threads_of_another_process() -> Iterator[list[int]]:
    """The thread ids (not the process id) of a multi-threaded process started here."""
    code = (
        "import threading, time\n"
        "for _ in range(3): threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "print(flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    try:
        yield [int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid]
    finally:
        proc.kill()
        proc.wait()


def other_threads() -> list[int]:
    """Thread ids of any process on the machine that are not the process's own id."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                found += [int(t) for t in os.listdir(f"/proc/{entry}/task") if t != entry]
    return found


def random_pids(rng: random.Random, threads: list[int], count: int) -> list[str]:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    system_threads = other_threads()
    fixed = [0, -1, 1, 2, os.getpid(), os.getppid(), threading.get_native_id(), pid_max + 1]
    pids = [str(p) for p in fixed + threads]
    pids += [str(t) for t in rng.sample(system_threads, min(10, len(system_threads)))]
    while len(pids) < count:
        candidate = rng.choice([rng.randrange(pid_max), rng.randrange(1 << 63), -rng.randrange(9)])
        if not os.path.exists(f"/proc/{candidate}"):  # nobody's process
            pids.append(str(candidate))
    pids += ["", "12x", "0x10", "9" * 40, "-", " 7"]
    return pids


def test_random_pids(kvstore: tuple[int, KvClient], threads_of_another_process: list[int]) -> None:
    pid, client = kvstore
    rng = random.Random(SEED)
    for target in random_pids(rng, threads_of_another_process, 60):
        for args in (
            ("inspect", "--timeout", "0.2", target),
            ("attach", target, "--new", str(V2), "--timeout", "0.2"),
        ):
            code, output = run_cli(*args)
            check_outcome(args, code, output, {3, 64})
    assert_serving(pid, client)
