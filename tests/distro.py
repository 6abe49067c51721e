"""Binaries as a distribution ships them: stripped, with their debug info split off into a
file placed where debuggers look for it, or served by a debuginfod server."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ekiden_trace.binary.elf import ElfBinary

PLACES = ["build-id", "beside", "dot-debug", "debug-dir"]


def build_id(path: Path) -> str:
    with ElfBinary(path) as elf:
        assert elf.build_id is not None
        return elf.build_id


def distro_build(binary: Path, installed: Path, strip: str = "--strip-all") -> Path:
    """Split `binary` as dh_strip does (objcopy --only-keep-debug, compressed), strip it,
    link it to its debug file (.gnu_debuglink) and install it at `installed`; the debug
    file, still in a build directory beside `installed`, where no debugger looks."""
    build = installed.parent / "build"
    build.mkdir(parents=True, exist_ok=True)
    work, debug = build / installed.name, build / f"{installed.name}.debug"
    shutil.copy2(binary, work)
    run = ["objcopy", "--only-keep-debug", "--compress-debug-sections", str(work), str(debug)]
    subprocess.run(run, check=True)
    subprocess.run(["strip", strip, "--remove-section=.comment", str(work)], check=True)
    subprocess.run(["objcopy", f"--add-gnu-debuglink={debug}", str(work)], check=True)
    installed.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(work, installed)
    return debug


def place_debug(debug: Path, place: str, installed: Path, debug_dir: Path) -> Path:
    """Put a debug file where a debugger looks for it: by build-id under `debug_dir`, beside
    the binary, in its .debug/, or under `debug_dir` plus the binary's directory."""
    if place == "build-id":
        ident = build_id(installed)
        target = debug_dir / ".build-id" / ident[:2] / f"{ident[2:]}.debug"
    elif place == "beside":
        target = installed.parent / debug.name
    elif place == "dot-debug":
        target = installed.parent / ".debug" / debug.name
    else:
        target = debug_dir / installed.parent.relative_to("/") / debug.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(debug, target)
    return target


@contextmanager
def debuginfod(files: dict[str, Path]) -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server with debuginfod's URL layout (/buildid/ID/debuginfo) serving
    `files` by build-id; yields its URL and the list of paths it was asked for."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            parts = self.path.strip("/").split("/")
            found = files.get(parts[1]) if len(parts) == 3 and parts[2] == "debuginfo" else None
            if parts[0] != "buildid" or found is None:
                self.send_error(404)
                return
            data = found.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
