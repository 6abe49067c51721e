"""A transformer file: carry state into a version whose struct was restructured.

bank_v2.c renames a field of struct account and changes its unit (euros to
cents), and adds a tagged total.  This script builds both versions into a
temporary directory, shows `ekiden-trace diff` without and with
xform_v1_v2.py, then starts v1, opens two accounts, and updates it to v2 with
the transformer: v2 lists v1's accounts in cents, with their total.

    python examples/update_bank.py      (as root, or where ptrace is allowed)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from build_and_run import build, ekiden_trace

SOURCES = Path(__file__).resolve().parent / "transformer"
XFORM = SOURCES / "xform_v1_v2.py"


def show(command: str, result: subprocess.CompletedProcess[str]) -> None:
    print(f"$ {command}   (exit {result.returncode})")
    print(result.stdout + result.stderr)


def ask(bank: subprocess.Popen[str], command: str) -> list[str]:
    """Send one command to the bank; its answer lines (up to "end" for list)."""
    assert bank.stdin is not None and bank.stdout is not None
    bank.stdin.write(command + "\n")
    bank.stdin.flush()
    lines = [bank.stdout.readline().rstrip("\n")]
    while command == "list" and lines[-1] != "end":
        lines.append(bank.stdout.readline().rstrip("\n"))
    return lines


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        v1, v2 = build(SOURCES / "bank_v1.c", Path(tmp)), build(SOURCES / "bank_v2.c", Path(tmp))
        show("ekiden-trace diff bank_v1 bank_v2", ekiden_trace("diff", str(v1), str(v2)))
        show(
            "ekiden-trace diff bank_v1 bank_v2 --xform xform_v1_v2.py",
            ekiden_trace("diff", str(v1), str(v2), "--xform", str(XFORM)),
        )

        bank = subprocess.Popen([v1], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            for command in ("open ada 12", "open grace 30", "list"):
                print(f"v1> {command}: {' | '.join(ask(bank, command))}")
            update = ekiden_trace("attach", str(bank.pid), "--new", str(v2), "--xform", str(XFORM))
            show(f"ekiden-trace attach {bank.pid} --new bank_v2 --xform xform_v1_v2.py", update)
            if update.returncode != 0:
                return update.returncode
            for command in ("open linus 5", "list"):
                print(f"v2> {command}: {' | '.join(ask(bank, command))}")
        finally:
            bank.kill()
            bank.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
