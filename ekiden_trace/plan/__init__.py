"""Planning an update: version to version, no process involved.

Owns the type matching that maps v1's tagged state onto v2's types, the
resulting `UpdatePlan` (what moves, what needs a transformer, what is dropped),
its cache, and the transformer registry a `--xform` file fills. It may import
`binary/`; never `target/`, `state/` or `ops/`.
"""
