"""The snapshot in and out of a process.

Owns the marks' control block and the rendezvous at an update point, locating
tagged variables, capturing them and the heap they reach into the `Snapshot`
model, the checks a snapshot must pass before the exec, the views transformers
see, whether a transformer's result fits its new type, encoding values into
the new version's types, the remote backend, and the
restore at the new version's tags. It may import `binary/`, `plan/` and
`target/`; never `ops/`.
"""
