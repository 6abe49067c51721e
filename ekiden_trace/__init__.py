"""ekiden-trace: update a running C program to its next version by state transfer.

Data flows one way, and the packages follow it: `binary/` (read files) ->
`plan/` (v1 -> v2, no process) -> `target/` (the live-process mechanism) ->
`state/` (the snapshot in and out) -> `ops/` (policy: preflight, inspect,
update, rollback, guardian). `cli` and `render` sit on top; `xform` is the API
transformer files import; `errors` and `faults` are shared by every layer.
`tests/layering.py` (run by `make lint`) checks these rules.
"""
