"""Run a command and write its own peak RSS (kB) to a file: `rusage.py OUT CMD ARGS...`.

A child forked from a large process starts with that process's pages: Linux counts
them into the child's ru_maxrss when it execs, so a bench process holding hundreds
of MB would show them as the tool's.  This script is exec'd fresh (about 9 MB), and
the command it spawns inherits only that: a floor well below any tool's figure.
SIGTERM makes it SIGKILL the command and still write the figure (the peak RSS of a
run killed at its time limit).
"""

import os
import signal
import sys


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    pid = os.posix_spawn(argv[0], argv, os.environ)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
    while True:
        try:
            _pid, status, usage = os.wait4(pid, 0)
            break
        except InterruptedError:
            continue
    with open(out, "w") as f:
        f.write(f"{usage.ru_maxrss}\n")
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
