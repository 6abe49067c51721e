"""The transformer API: what a file given to `--xform` imports.

    from ekiden_trace.xform import drop, field, rename, type_, variable

The decorators register functions; each receives the old value (a `View` of
v1's state, or a plain int, float or enumerator name) and a `Context`.
`rename(...)` says what v1 state became in v2, `drop(...)` acknowledges state
the update throws away (without it, `attach` refuses such an update), and
`union_member(...)` says which member of a union with no discriminant is live.
"""

from ekiden_trace.plan.transformers import (
    TransformerError,
    drop,
    field,
    rename,
    type_,
    union_member,
    variable,
)
from ekiden_trace.state.views import Context, New, View

__all__ = [
    "Context",
    "New",
    "TransformerError",
    "View",
    "drop",
    "field",
    "rename",
    "type_",
    "union_member",
    "variable",
]
