"""User transformers: plain Python functions that turn old state into new.

A transformer file (`--xform FILE.py`) registers functions with these decorators:

    from ekiden_trace.xform import field, type_, variable

    @variable("table")                 # the value of v2's tagged `table`
    def rebuild(old, ctx): ...

    @field("struct table", "nentries") # a v2 field, from the old struct
    def nentries(old_table, ctx): return old_table.count

    @type_("struct entry")             # a whole old struct -> dict of v2 fields
    def entry(old_entry, ctx): ...

`old` is a read-only view of the v1 value (see `View`); `ctx` is a `Context`.
A function returns the new value: an int, float, str or bytes, None (NULL),
a dict (struct fields by name), a list (array elements), an enumerator name,
an address in the new process (an int, e.g. from `ctx.call`), a new object
(`ctx.new`, `ctx.array`, `ctx.string`), or a View of old state to convert
automatically.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

from ekiden_trace.errors import EkidenError

TransformerFn = Callable[[Any, Any], Any]  # fn(old value, ctx: state.views.Context)


class TransformerError(EkidenError):
    """A transformer file could not be loaded, or a transformer raised."""

    exit_code = 7

    @classmethod
    def raised(cls, target: str, exc: BaseException) -> TransformerError:
        """The error for a transformer that raised, with its traceback."""
        detail = _user_traceback(exc)
        return cls(f"the transformer of {target} raised {type(exc).__name__}: {exc}\n{detail}")


@dataclass
class Transformers:
    """Registered transformers, by variable, by type name, and by (type name, field)."""

    variables: dict[str, TransformerFn] = dataclass_field(default_factory=dict)
    types: dict[str, TransformerFn] = dataclass_field(default_factory=dict)
    fields: dict[tuple[str, str], TransformerFn] = dataclass_field(default_factory=dict)

    def for_variable(self, key: str, name: str) -> TransformerFn | None:
        """The transformer of a variable, registered by its key or plain name."""
        return self.variables.get(key) or self.variables.get(name)

    def for_type(self, type_name: str) -> TransformerFn | None:
        return self.types.get(type_name)

    def for_field(self, type_name: str, field_name: str) -> TransformerFn | None:
        return self.fields.get((type_name, field_name))


_PACKAGE = Path(__file__).resolve().parent


def _user_traceback(exc: BaseException) -> str:
    """The traceback of an exception, without the frames of ekiden-trace or importlib."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith("<") and _PACKAGE not in Path(f.filename).resolve().parents
    ]
    lines = (
        ["Traceback (most recent call last):\n", *traceback.format_list(frames)] if frames else []
    )
    return "".join(lines + traceback.format_exception_only(exc)).rstrip()


def run_transformer(fn: TransformerFn, target: str, old: Any, ctx: Any) -> Any:
    """Call a transformer; anything it raises becomes a TransformerError with its traceback."""
    try:
        return fn(old, ctx)
    except EkidenError:
        raise
    except Exception as exc:
        raise TransformerError.raised(target, exc) from exc


_loading: Transformers | None = None


def _registrar(register: Callable[[Transformers, TransformerFn], None]) -> Callable:
    def decorator(fn: TransformerFn) -> TransformerFn:
        if _loading is None:
            raise TransformerError("transformer decorators work only in a file given to --xform.")
        register(_loading, fn)
        return fn

    return decorator


def variable(name: str) -> Callable[[TransformerFn], TransformerFn]:
    """Register fn(old_value_or_None, ctx) as the producer of v2's tagged variable `name`."""
    return _registrar(lambda t, fn: t.variables.__setitem__(name, fn))


def type_(type_name: str) -> Callable[[TransformerFn], TransformerFn]:
    """Register fn(old_value, ctx) converting every value of old type `type_name`."""
    return _registrar(lambda t, fn: t.types.__setitem__(" ".join(type_name.split()), fn))


def field(type_name: str, field_name: str) -> Callable[[TransformerFn], TransformerFn]:
    """Register fn(old_struct, ctx) giving v2's field `field_name` of `type_name`."""
    key = (" ".join(type_name.split()), field_name)
    return _registrar(lambda t, fn: t.fields.__setitem__(key, fn))


def load_transformers(path: str | None) -> Transformers:
    """Import a transformer file; TransformerError with its traceback when it fails."""
    global _loading
    found = Transformers()
    if path is None:
        return found
    file = Path(path)
    if not file.is_file():
        raise TransformerError(f"the transformer file {file} does not exist.")
    spec = importlib.util.spec_from_file_location(f"ekiden_xform_{file.stem}", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    _loading = found
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        detail = _user_traceback(exc)
        raise TransformerError(
            f"the transformer file {file} does not import ({type(exc).__name__}: {exc}); "
            f"fix it and retry.\n{detail}"
        ) from None
    finally:
        _loading = None
    sys.modules.pop(spec.name, None)
    return found
