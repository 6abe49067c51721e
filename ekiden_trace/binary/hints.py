"""Pointer hints: what a pointer really points to when its C type does not say.

Hints come from the C marks (EKIDEN_HINT_* in probes/ekiden.h); a Python
transformer file will be able to add more through the same `Hints` object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ekiden_trace.binary.marks import HintMark


@dataclass(frozen=True)
class PointerHint:
    """How to follow one pointer: an array or buffer of `length`, a `target` type, or not at all."""

    kind: str
    length: str | None = None
    target: str | None = None

    def describe(self) -> str:
        """A short human description, e.g. 'array of nbuckets'."""
        if self.kind in ("array", "buffer"):
            return f"{self.kind} of {self.length}"
        if self.kind == "points_to":
            return f"points to {self.target}"
        return "opaque"


@dataclass(frozen=True)
class UnionCase:
    """When struct field `discriminant` equals `value`, union member `member` is active."""

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
    def from_marks(cls, marks: list[HintMark]) -> Hints:
        """Collect the hints written in C."""
        hints = cls()
        for mark in marks:
            subject = normalise_type_name(mark.subject)
            if mark.kind == "union_case":
                discriminant, _, value = mark.arg.partition("=")
                case = UnionCase(discriminant, value, mark.member)
                hints.unions.setdefault((subject, mark.field), []).append(case)
                continue
            if mark.kind == "points_to":
                hint = PointerHint("points_to", target=normalise_type_name(mark.arg))
            elif mark.kind in ("array", "buffer"):
                hint = PointerHint(mark.kind, length=mark.arg)
            else:
                hint = PointerHint("opaque")
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
                rows.append(
                    {
                        "subject": f"{subject}.{fld}",
                        "hint": f"member {case.member} when {case.discriminant} == {case.value}",
                    }
                )
        return rows
