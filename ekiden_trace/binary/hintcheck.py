"""Hints checked against the program's DWARF when the binary is read.

Every hint must name a type, field and member the debug info has, and every
length must be an expression whose names are integers the capture can read:
so `points`, `diff` and `attach` refuse a bad hint alike, before any process
is touched.
"""

from __future__ import annotations

from ekiden_trace.binary.dwarf.index import DebugIndex
from ekiden_trace.binary.dwarf.types import TypeInfo, byte_size, get, strip
from ekiden_trace.binary.hintexpr import Expr, HintExprError, fold, names, parse
from ekiden_trace.binary.marks import HintMark
from ekiden_trace.errors import BinaryError

INTEGER_KINDS = ("base", "enum")

Step = tuple[str, int, int, bool, bool]
"""One field of a length path after the first: name, offset, size, signed, is a pointer."""


class HintChecker:
    """Resolves the names of one program's hints through its DWARF."""

    def __init__(self, index: DebugIndex) -> None:
        self.index = index
        self.types = index.types

    def fail(self, mark: HintMark, reason: str) -> BinaryError:
        """The one-sentence error for a bad hint."""
        subject = f"{mark.subject}.{mark.field}" if mark.subject else mark.field
        return BinaryError(
            f"{mark.file}: the {mark.kind} hint on {subject} {reason}; fix its EKIDEN_HINT_* mark."
        )

    def struct(self, mark: HintMark) -> TypeInfo | None:
        """The struct a field hint names (None for a variable hint, whose variable must
        exist)."""
        if not mark.subject:
            if not self.index.variables_named(mark.field):
                raise self.fail(mark, "names a variable the debug info does not have")
            return None
        tid = self.index.type_by_name(mark.subject)
        info = get(self.types, strip(self.types, tid))
        if tid is None or info.kind not in ("struct", "union"):
            raise self.fail(mark, f"names `{mark.subject}`, which the debug info does not define")
        field = mark.field.split(".")[0]
        if not any(m.name == field for m in info.members):
            raise self.fail(mark, f"names a field {mark.subject} does not have")
        return info

    def union_case(self, mark: HintMark, owner: TypeInfo | None, discriminant: str) -> None:
        """Check a union hint: its member exists, and its discriminant when it has one."""
        assert owner is not None, "union hints are field hints"
        union = next(m for m in owner.members if m.name == mark.field)
        info = get(self.types, strip(self.types, union.type))
        if info.kind != "union" or not any(m.name == mark.member for m in info.members):
            raise self.fail(mark, f"names a member {mark.member} that {mark.field} does not have")
        if discriminant and not any(m.name == discriminant for m in owner.members):
            raise self.fail(mark, f"names a discriminant {discriminant} {mark.subject} lacks")

    def type_name(self, mark: HintMark, name: str) -> str:
        """A type a hint names, checked."""
        name = " ".join(name.split())
        if self.index.type_by_name(name) is None:
            raise self.fail(mark, f"names the type `{name}`, which the debug info does not define")
        return name

    def length(
        self, mark: HintMark, text: str, owner: TypeInfo | None
    ) -> tuple[Expr, dict[tuple[str, ...], tuple[Step, ...]]]:
        """A length expression, sizeof folded, with the steps of each field path."""
        try:
            expr = fold(parse(text), self._sizeof)
        except HintExprError as exc:
            raise self.fail(
                mark, f"has the length `{text}`, which is not understood ({exc})"
            ) from None
        except LookupError as exc:
            raise self.fail(mark, f"has the length `{text}`, whose sizeof names {exc}") from None
        paths = {}
        for path in names(expr):
            steps = self._path(owner, path)
            if steps is None:
                where = f"a field of {mark.subject} or" if owner is not None else ""
                raise self.fail(
                    mark,
                    f"has the length `{text}`, but `{'->'.join(path)}` is not {where} "
                    "an integer variable",
                )
            paths[path] = steps
        return expr, paths

    def _sizeof(self, subject: str) -> int:
        element = subject.endswith("[0]")
        name = subject.removesuffix("[0]").strip()
        tid = self.index.type_by_name(name.rstrip("* "))
        if tid is not None and not element:
            return 8 if name.endswith("*") else byte_size(self.types, tid) or 0
        found = self.index.variables_named(name)
        if not found:
            raise LookupError(f"`{name}`, neither a type nor a variable")
        tid = found[0].type
        if element:
            tid = get(self.types, strip(self.types, tid)).target
        return byte_size(self.types, tid) or 0

    def _path(self, owner: TypeInfo | None, path: tuple[str, ...]) -> tuple[Step, ...] | None:
        """The steps after the first name, or None when the path reads no integer."""
        member = None
        if owner is not None:
            member = next((m for m in owner.members if m.name == path[0]), None)
        if member is None:
            variables = self.index.variables_named(path[0])
            if len(path) != 1 or not variables:
                return None
            return () if self._is_integer(variables[0].type) else None
        steps: list[Step] = []
        tid = member.type
        for name in path[1:]:
            info = get(self.types, strip(self.types, tid))
            if info.kind == "pointer":
                info = get(self.types, strip(self.types, info.target))
            inner = next((m for m in info.members if m.name == name), None)
            if info.kind not in ("struct", "union") or inner is None:
                return None
            inner_info = get(self.types, strip(self.types, inner.type))
            signed = inner_info.encoding in ("signed", "signed_char")
            size = inner_info.size or 0
            steps.append((name, inner.offset, size, signed, inner_info.kind == "pointer"))
            tid = inner.type
        return tuple(steps) if self._is_integer(tid) else None

    def _is_integer(self, tid: int) -> bool:
        info = get(self.types, strip(self.types, tid))
        return info.kind in INTEGER_KINDS and info.encoding != "float"
