"""Pointer hints: what a pointer really points to when its C type does not say.

Hints come from the C marks (EKIDEN_HINT_* in probes/ekiden.h), checked
against the program's DWARF when the binary is read (binary/hintcheck.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ekiden_trace.binary.dwarf.index import DebugIndex
from ekiden_trace.binary.dwarf.types import TypeInfo
from ekiden_trace.binary.hintcheck import HintChecker, Step
from ekiden_trace.binary.hintexpr import Expr, Num, Path, evaluate, names
from ekiden_trace.binary.marks import HintMark

Lengths = dict[Path, tuple[Step, ...]]


@dataclass(frozen=True)
class Length:
    """A hint's length: the expression as written (macros expanded), sizeof folded, and
    how to read each field path it names."""

    text: str
    expr: Expr
    paths: Lengths = field(default_factory=dict, hash=False, compare=False)

    def describe(self) -> str:
        """The length as written, with its value when it is a constant: 'NRANGES = 4'."""
        if isinstance(self.expr, Num) and str(self.expr.value) == self.text:
            return self.text
        if not names(self.expr):
            return f"{self.text} = {evaluate(self.expr, lambda path: 0)}"
        return self.text


@dataclass(frozen=True)
class PointerHint:
    """How to follow one pointer: an array or buffer of `length` elements, a string of
    `shown` bytes in a buffer of `length` (a string with capacity), a `target` type, or
    not at all (opaque)."""

    kind: str
    length: Length | None = None
    target: str | None = None
    shown: Length | None = None

    def describe(self) -> str:
        """A short human description, e.g. 'array of nbuckets'."""
        if self.kind in ("array", "buffer") and self.length is not None:
            return f"{self.kind} of {self.length.describe()}"
        if self.kind == "string" and self.length is not None and self.shown is not None:
            return f"string of {self.shown.describe()} in {self.length.describe()} bytes"
        if self.kind == "points_to":
            return f"points to {self.target}"
        return "opaque"


@dataclass(frozen=True)
class UnionCase:
    """When struct field `discriminant` equals `value`, union member `member` is active;
    with no discriminant, `member` is always the active one."""

    discriminant: str
    value: str
    member: str


def normalise_type_name(name: str) -> str:
    """Collapse whitespace so 'struct  table' and 'struct table' compare equal."""
    return " ".join(name.split())


@dataclass
class Hints:
    """All hints of a program, keyed by struct name and field, or by variable name."""

    fields: dict[tuple[str, str], PointerHint] = field(default_factory=dict)
    variables: dict[str, PointerHint] = field(default_factory=dict)
    unions: dict[tuple[str, str], list[UnionCase]] = field(default_factory=dict)

    @classmethod
    def from_marks(cls, marks: list[HintMark], index: DebugIndex) -> Hints:
        """Collect the hints written in C; BinaryError for one the DWARF contradicts."""
        hints = cls()
        checker = HintChecker(index)
        for mark in marks:
            mark = replace(mark, subject=normalise_type_name(mark.subject))
            subject = mark.subject
            owner = checker.struct(mark)
            if mark.kind in ("union_case", "union_member"):
                discriminant, _, value = mark.arg.partition("=")
                checker.union_case(mark, owner, discriminant)
                case = UnionCase(discriminant, value, mark.member)
                hints.unions.setdefault((subject, mark.field), []).append(case)
                continue
            hint = _pointer_hint(checker, mark, owner)
            if subject:
                hints.fields[(subject, mark.field)] = hint
            else:
                hints.variables[mark.field] = hint
        return hints

    def describe(self) -> list[dict[str, str]]:
        """Every hint as a flat record, for `points`."""
        rows = [
            {"subject": f"{subject}.{fld}", "hint": hint.describe()}
            for (subject, fld), hint in sorted(self.fields.items())
        ]
        rows += [
            {"subject": name, "hint": hint.describe()}
            for name, hint in sorted(self.variables.items())
        ]
        for (subject, fld), cases in sorted(self.unions.items()):
            for case in cases:
                when = "always"
                if case.discriminant:
                    when = f"when {case.discriminant} == {case.value}"
                rows.append({"subject": f"{subject}.{fld}", "hint": f"member {case.member} {when}"})
        return rows


def _pointer_hint(checker: HintChecker, mark: HintMark, owner: TypeInfo | None) -> PointerHint:
    """The pointer hint of one (field or variable) mark, checked."""

    def length(text: str) -> Length:
        return Length(text, *checker.length(mark, text, owner))

    if mark.kind == "points_to":
        return PointerHint("points_to", target=checker.type_name(mark, mark.arg))
    if mark.kind in ("array", "buffer"):
        return PointerHint(mark.kind, length=length(mark.arg))
    if mark.kind == "string":
        return PointerHint("string", length=length(mark.member), shown=length(mark.arg))
    return PointerHint("opaque")
