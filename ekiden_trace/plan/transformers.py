"""User transformers: plain Python functions that turn old state into new.

A transformer file (`--xform FILE.py`) registers functions with these decorators:

    from ekiden_trace.xform import field, type_, variable

    @variable("table")                 # the value of v2's tagged `table`
    def rebuild(old, ctx): ...

    @field("struct table", "nentries") # a v2 field, from the old struct
    def nentries(old_table, ctx): return old_table.count

    @type_("struct entry")             # a whole old struct -> dict of v2 fields
    def entry(old_entry, ctx): ...

    rename("struct stats", "owner", "user")  # v1's field `owner` is v2's `user`
    rename("hits", "nhits")                  # v1's tagged `hits` is v2's `nhits`
    drop("struct stats", "debug")            # v2 has no `debug`: throw it away, knowingly
    drop("main:scratch")                     # the same for a tagged variable
    union_member("struct job", "u", "fn")    # member fn of union u is always the live one

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

from ekiden_trace.binary.hints import Hints, UnionCase
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
    drops: dict[tuple[str, ...], str] = dataclass_field(default_factory=dict)
    """What may be dropped, (variable key or name,) or (type name, field name), and what
    says so: drop(...), or the transformer that replaces it."""
    renamed_fields: dict[tuple[str, str], str] = dataclass_field(default_factory=dict)
    """(type name, v1 field) -> the v2 field of the same struct that takes its value."""
    renamed_variables: dict[str, str] = dataclass_field(default_factory=dict)
    """v1 variable key or name -> the key or name of the v2 tagged variable that takes it."""
    union_members: dict[tuple[str, str], str] = dataclass_field(default_factory=dict)
    """(struct name, union field) -> the member of the union that is always the live one."""

    def for_variable(self, key: str, name: str) -> TransformerFn | None:
        """The transformer of a variable, registered by its key or plain name."""
        return self.variables.get(key) or self.variables.get(name)

    def for_type(self, type_name: str) -> TransformerFn | None:
        return self.types.get(type_name)

    def for_field(self, type_name: str, field_name: str) -> TransformerFn | None:
        return self.fields.get((type_name, field_name))

    def renamed_from(self, type_name: str, field_name: str) -> str | None:
        """The v1 field that v2's field `field_name` of `type_name` was renamed from."""
        return next(
            (
                old
                for (t, old), new in self.renamed_fields.items()
                if (t, new) == (type_name, field_name)
            ),
            None,
        )

    def acknowledges(self, *subject: str) -> str:
        """What in the file lets this be dropped ('' if nothing): drop(key or name),
        drop(type, field), or a transformer registered with replaces=."""
        return self.drops.get(subject, "")

    def names(self) -> list[list[Any]]:
        """Every name the file registers, as JSON (what a cached plan depends on)."""
        return [
            sorted(self.variables),
            sorted(self.types),
            sorted([t, f] for t, f in self.fields),
            sorted([*d, by] for d, by in self.drops.items()),
            sorted([t, old, new] for (t, old), new in self.renamed_fields.items()),
            sorted([old, new] for old, new in self.renamed_variables.items()),
            sorted([t, f, m] for (t, f), m in self.union_members.items()),
        ]

    def add_hints(self, hints: Hints) -> None:
        """Give v1's hints what the file says of its unions, for the capture."""
        for (type_name, field_name), member in self.union_members.items():
            hints.unions[(type_name, field_name)] = [UnionCase("", "", member)]


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
    except (Exception, SystemExit) as exc:  # sys.exit() in a transformer must not end the tool
        raise TransformerError.raised(target, exc) from exc


_loading: Transformers | None = None


def _loading_file() -> Transformers:
    """The registry of the transformer file being imported."""
    if _loading is None:
        raise TransformerError("the transformer API works only in a file given to --xform.")
    return _loading


def _registrar(register: Callable[[Transformers, TransformerFn], None]) -> Callable:
    def decorator(fn: TransformerFn) -> TransformerFn:
        register(_loading_file(), fn)
        return fn

    return decorator


def _normal(type_name: str) -> str:
    return " ".join(type_name.split())


def variable(
    name: str, replaces: str | tuple[str, ...] = ()
) -> Callable[[TransformerFn], TransformerFn]:
    """Register fn(old_value_or_None, ctx) as the producer of v2's tagged variable `name`;
    `replaces` names v1 variables v2 lacks that it takes the place of (not dropped, then)."""

    def register(t: Transformers, fn: TransformerFn) -> None:
        t.variables[name] = fn
        t.drops.update({(old,): f'@variable("{name}")' for old in _names(replaces)})

    return _registrar(register)


def type_(type_name: str) -> Callable[[TransformerFn], TransformerFn]:
    """Register fn(old_value, ctx) converting every value of old type `type_name`."""
    return _registrar(lambda t, fn: t.types.__setitem__(_normal(type_name), fn))


def field(
    type_name: str, field_name: str, replaces: str | tuple[str, ...] = ()
) -> Callable[[TransformerFn], TransformerFn]:
    """Register fn(old_struct, ctx) giving v2's field `field_name` of `type_name`;
    `replaces` names v1 fields v2 lacks that it takes the place of (not dropped, then)."""
    key = (_normal(type_name), field_name)

    def register(t: Transformers, fn: TransformerFn) -> None:
        t.fields[key] = fn
        by = f'@field("{key[0]}", "{field_name}")'
        t.drops.update({(key[0], old): by for old in _names(replaces)})

    return _registrar(register)


def _names(names: str | tuple[str, ...]) -> tuple[str, ...]:
    return (names,) if isinstance(names, str) else tuple(names)


def drop(*subject: str) -> None:
    """Acknowledge that the update throws state away: `drop("main:scratch")` for a tagged
    variable v2 no longer has, `drop("struct stats", "debug")` for a field v2 removed.
    Without it (or `attach --allow-drop`) an update that drops state is refused."""
    if len(subject) not in (1, 2):
        raise TransformerError(
            'drop() takes a variable, or a type and a field: drop("struct s", "f").'
        )
    key = (_normal(subject[0]), subject[1]) if len(subject) == 2 else subject
    _loading_file().drops[key] = "drop"


def rename(*names: str) -> None:
    """Say what v1 state became in v2: `rename("struct stats", "owner", "user")` for a field,
    `rename("hits", "nhits")` for a tagged variable; the value is converted as usual."""
    if len(names) == 3:
        _loading_file().renamed_fields[(_normal(names[0]), names[1])] = names[2]
    elif len(names) == 2:
        _loading_file().renamed_variables[names[0]] = names[1]
    else:
        raise TransformerError(
            'rename() takes a type and two fields, or two variables: rename("struct s", "a", "b").'
        )


def union_member(type_name: str, field_name: str, member: str) -> None:
    """Say which member of a union field with no discriminant is the live one, as
    EKIDEN_HINT_UNION_MEMBER does in C: `union_member("struct job", "u", "fn")`."""
    _loading_file().union_members[(_normal(type_name), field_name)] = member


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
    except EkidenError:
        raise  # Ctrl-C while importing, or a decorator used wrongly
    except (Exception, SystemExit) as exc:
        detail = _user_traceback(exc)
        raise TransformerError(
            f"the transformer file {file} does not import ({type(exc).__name__}: {exc}); "
            f"fix it and retry.\n{detail}"
        ) from None
    finally:
        _loading = None
    sys.modules.pop(spec.name, None)
    return found
