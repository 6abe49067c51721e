"""Read a live process's tagged state from Python, through `inspect --json`.

Runs `ekiden-trace inspect --json PID` (the process stops at its next update
point for as long as the read takes) and prints each tagged variable with its
C type and value, then the heap objects by type.  The JSON layout is in
README.md ("JSON output").

    python examples/inspect_json.py PID      (e.g. the pid of fixtures/kvstore/v1)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from typing import Any


def inspect(pid: int) -> dict[str, Any]:
    """The snapshot of process `pid`, as `ekiden-trace inspect --json` prints it."""
    result = subprocess.run(
        [sys.executable, "-m", "ekiden_trace", "inspect", "--json", str(pid)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"inspect failed (exit {result.returncode}): {result.stderr.strip()}")
    return json.loads(result.stdout)


def short(value: Any, objects: dict[str, Any]) -> str:
    """A value in a few characters: strings by text, pointers by object, lists by length."""
    if isinstance(value, list):
        return f"[{len(value)} items]"
    if isinstance(value, dict) and "ref" in value:
        target = objects[str(value["ref"])]
        return (
            repr(target["string"]) if "string" in target else f"-> #{value['ref']} {target['type']}"
        )
    if isinstance(value, dict) and "struct" in value:
        return "{" + ", ".join(f"{k}={short(v, objects)}" for k, v in value["fields"].items()) + "}"
    if isinstance(value, dict) and "union" in value:
        active = value["active"]
        return f"{{{active}={short(value['members'][active], objects)}}}" if active else "{?}"
    if isinstance(value, dict) and "enum" in value:
        return str(value["enum"])
    if isinstance(value, dict) and "function" in value:
        return f"&{value['function']}"
    return json.dumps(value)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} PID")
    snapshot = inspect(int(sys.argv[1]))
    stop, objects = snapshot["stop"], snapshot["objects"]
    print(f"pid {snapshot['pid']} stopped at {stop['point']} in {stop['function']}")
    for var in snapshot["variables"]:
        print(f"{var['key']} ({var['type']}) = {short(var['value'], objects)}")
    kinds = Counter(obj["type"] for obj in objects.values())
    print(f"{len(objects)} heap objects: " + ", ".join(f"{n} {t}" for t, n in kinds.most_common()))
    strings = sorted(obj["string"] for obj in objects.values() if "string" in obj)
    print("strings on the heap: " + ", ".join(strings))


if __name__ == "__main__":
    main()
