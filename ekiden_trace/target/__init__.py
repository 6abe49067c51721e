"""The live-process mechanism, like CRIU's compel: stop, read, write, inject, exec.

Owns the ptrace binding, the `Tracee` (seize, wait loop, memory), everything read
from /proc (`procfs`), the ELF images mapped into a process, injected system
calls and function calls, exec in place, unwinding and disassembly. It knows
nothing of snapshots or policy: it may import `binary/`; never `plan/`,
`state/` or `ops/`.
"""
