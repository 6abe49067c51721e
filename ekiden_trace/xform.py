"""The transformer API: what a file given to `--xform` imports.

    from ekiden_trace.xform import field, type_, variable

The decorators register functions; each receives the old value (a `View` of
v1's state, or a plain int, float or enumerator name) and a `Context`.
"""

from ekiden_trace.plan.transformers import TransformerError, field, type_, variable
from ekiden_trace.state.views import Context, New, View

__all__ = ["Context", "New", "TransformerError", "View", "field", "type_", "variable"]
