"""The static update plan: how each tagged variable and type of v1 maps onto v2.

Computed from the two binaries alone, before any process is touched; `diff`
prints it and `attach` refuses to start when it has blocking problems.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import astuple, dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

from ekiden_trace.binary.dwarf.cache import load_or_build, store
from ekiden_trace.binary.dwarf.types import Member, TypeInfo, c_name, get, strip
from ekiden_trace.binary.hints import PointerHint
from ekiden_trace.binary.layouts import holds_pointer
from ekiden_trace.binary.program import Program, TaggedVariable
from ekiden_trace.plan.transformers import TransformerError, Transformers

INT_ENCODINGS = ("signed", "unsigned", "signed_char", "unsigned_char", "bool")
CHAR_ENCODINGS = ("signed_char", "unsigned_char")
PLAN_FORMAT = 5
"""Version of the cached plan layout (see plan_update)."""


@dataclass
class VariablePlan:
    """What happens to one tagged variable."""

    key: str
    name: str
    old: TaggedVariable | None
    new: TaggedVariable | None
    action: str  # 'transfer', 'transformer', 'dropped', 'initialised by v2'
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Drop:
    """State of v1 that the update throws away: a tagged variable v2 lacks (type_name
    None, name its key) or a field v2's struct lacks, or the tail of such a variable or
    field whose fixed array v2 shortens (cut says which elements)."""

    type_name: str | None
    name: str
    c_type: str  # v1's type; 'v1 type -> v2 type' for a cut
    acknowledged_by: str  # drop, or the transformer that replaces it; '' when nothing
    renamed_to: str | None = None  # v2's field or variable of the same type in its place
    cut: str = ""  # 'elements 4..7', 'chars 8..15': what a shortened array loses

    @property
    def acknowledged(self) -> bool:
        return bool(self.acknowledged_by)

    @property
    def what(self) -> str:
        where = f"{self.type_name}.{self.name}" if self.type_name else self.name
        return f"{self.cut} of {where}" if self.cut else where

    def call(self, function: str = "drop") -> str:
        """The transformer-file line that acknowledges it (or renames it)."""
        args = [self.type_name] if self.type_name else []
        args += [self.name, self.renamed_to] if function == "rename" else [self.name]
        return f"{function}({', '.join(repr(a).replace(chr(39), chr(34)) for a in args)})"

    def to_json(self) -> list[Any]:
        return list(astuple(self))


def _state(drop: Drop) -> str:
    """Whether a drop is acknowledged, and how: for the notes on a type."""
    if drop.acknowledged_by == "drop":
        return "acknowledged"
    if drop.acknowledged:
        return f"replaced by {drop.acknowledged_by}"
    if drop.renamed_to:
        return f"likely renamed to {drop.renamed_to}"
    return "not acknowledged"


def describe_drop(drop: Drop) -> str:
    """A drop for people: what, and what acknowledges it."""
    what = f"{drop.what} ({drop.c_type})"
    if drop.acknowledged:
        return f"{what}, {_state(drop)}"
    if drop.renamed_to:
        return f"{what}, {_state(drop)}: {drop.call('rename')}"
    return f"{what}: {drop.call()}"


@dataclass
class UpdatePlan:
    """The mapping of every tagged variable, with everything that blocks the update
    (problems) and the state it throws away (drops)."""

    old: Program
    new: Program
    variables: list[VariablePlan]
    type_notes: dict[str, list[str]]
    problems: list[str]
    drops: list[Drop] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def unacknowledged(self) -> list[Drop]:
        """What would be dropped without the transformer file saying so."""
        return [d for d in self.drops if not d.acknowledged]

    def for_key(self, key: str) -> VariablePlan | None:
        """The plan of a variable by its identity key."""
        return next((v for v in self.variables if v.key == key), None)


def _under(path: str, problem: str) -> str:
    """Prefix a problem with the path to it: 'table' + '*.buckets: ...' -> 'table*.buckets: ...'."""
    return f"{path}{problem}" if problem[0] in ".*[" else f"{path}: {problem}"


Request = tuple[int, int, str]
"""A pair of types to compare, (v1 type id, v2 type id), and the path that leads to it."""

Comparison = Generator[Request, list[str], list[str]]
"""A comparison in progress: it yields each pair it depends on, is sent that pair's
problems, and returns its own."""


class _Types:
    """The types of one version, with the names and stripped ids asked for memoised."""

    def __init__(self, types: dict[int, TypeInfo]) -> None:
        self.types = types
        self.name = cache(partial(c_name, types))
        self.strip = cache(partial(strip, types))

    def underlying(self, tid: int | None) -> TypeInfo:
        """The type past typedefs and qualifiers."""
        return get(self.types, self.strip(tid))


class TypeMatcher:
    """Compares a v1 type with a v2 type, with memoisation and cycle safety.

    Nested types are compared depth first on an explicit stack, not by recursion,
    so a chain of thousands of types (each pointing to the next) fits.
    """

    def __init__(self, old: Program, new: Program, transformers: Transformers) -> None:
        self.old = _Types(old.index.types)
        self.new = _Types(new.index.types)
        self.transformers = transformers
        self.old_unions = old.hints.unions
        self.old_hints = old.hints.fields
        self.by_name = (old.index.type_by_name, new.index.type_by_name)
        self.notes: dict[str, list[str]] = {}
        self.drops: dict[tuple[str, str], Drop] = {}
        self._memo: dict[tuple[int, int], list[str]] = {}

    def problems(self, old_tid: int, new_tid: int, path: str) -> list[str]:
        """Why values of old_tid cannot be converted to new_tid automatically (empty: they can)."""
        key = self._key(old_tid, new_tid)
        if key not in self._memo:
            self._compare_from(key)
        return self._found(key, path)

    def _key(self, old_tid: int, new_tid: int) -> tuple[int, int]:
        return self.old.strip(old_tid), self.new.strip(new_tid)

    def _found(self, key: tuple[int, int], path: str) -> list[str]:
        """The memoised problems of a pair, under path."""
        return [_under(path, problem) for problem in self._memo[key]]

    def _begin(self, key: tuple[int, int]) -> Comparison:
        self._memo[key] = []  # assumed compatible while in progress (pointer cycles)
        return self._compare(get(self.old.types, key[0]), get(self.new.types, key[1]))

    def _compare_from(self, key: tuple[int, int]) -> None:
        """Compare a pair and, depth first, every pair it depends on; memoise each."""
        stack = [(key, "", self._begin(key))]
        answer: list[str] | None = None  # what the comparison on top is sent next
        while stack:
            current, path, comparison = stack[-1]
            try:
                old_tid, new_tid, nested_path = comparison.send(answer)
            except StopIteration as finished:
                stack.pop()
                self._memo[current] = finished.value
                answer = self._found(current, path)
                continue
            nested = self._key(old_tid, new_tid)
            if nested in self._memo:
                answer = self._found(nested, nested_path)
            else:
                stack.append((nested, nested_path, self._begin(nested)))
                answer = None  # a comparison starts with None

    def _note(self, type_name: str, note: str) -> None:
        notes = self.notes.setdefault(type_name, [])
        if note not in notes:
            notes.append(note)

    def _compare(self, old: TypeInfo, new: TypeInfo) -> Comparison:
        old_name = self.old.name(old.id)
        new_name = self.new.name(new.id)
        if self.transformers.for_type(old_name) is not None:
            self._note(old_name, "converted by a type transformer")
            return []
        if old.kind == "base" and new.kind == "base":
            return self._compare_base(old, new, old_name, new_name)
        if old.kind != new.kind:
            return [f"{old_name} became {new_name}; give a transformer"]
        if old.kind == "enum":
            missing = sorted(set(old.enumerators) - set(new.enumerators))
            if missing:
                return [
                    f"enumerators {', '.join(missing)} of {old_name} are gone in v2; "
                    "give a transformer"
                ]
            if old.size != new.size:
                self._note(old_name, f"size {old.size} -> {new.size} bytes")
            return []
        if old.kind == "pointer":
            return (yield from self._compare_pointer(old, new))
        if old.kind in ("struct", "union"):
            return (yield from self._compare_members(old, new, old_name))
        if old.kind == "array":
            if old.count != new.count:
                self._note(old_name, f"array {old.count} -> {new.count} elements")
            return (yield (old.target or -1, new.target or -1, "[]"))
        return []

    def _compare_base(
        self, old: TypeInfo, new: TypeInfo, old_name: str, new_name: str
    ) -> list[str]:
        old_int = old.encoding in INT_ENCODINGS
        new_int = new.encoding in INT_ENCODINGS
        if old_int != new_int:
            return [f"{old_name} became {new_name}; give a transformer"]
        return []  # size changes are noted where they stand (a field, or the variable)

    def _note_field_type(self, type_name: str, name: str, old_tid: int, new_tid: int) -> None:
        old, new = self.old.name(old_tid), self.new.name(new_tid)
        if old == new:
            return
        old_size = self.old.underlying(old_tid).size or 0
        new_size = self.new.underlying(new_tid).size or 0
        how = (
            "narrowed, checked per value"
            if new_size < old_size
            else "widened"
            if new_size > old_size
            else "changed"
        )
        self._note(type_name, f"field {name}: {old} -> {new} ({how})")

    def _compare_pointer(self, old: TypeInfo, new: TypeInfo) -> Comparison:
        old_to = self.old.underlying(old.target)
        new_to = self.new.underlying(new.target)
        if old_to.kind == "function" or new_to.kind == "function":
            if old_to.kind != new_to.kind:
                return ["a function pointer became a data pointer; give a transformer"]
            return []
        if old_to.kind == "void" or new_to.kind == "void":
            return []  # followed only with a hint; checked per value at capture
        return (yield (old_to.id, new_to.id, "*"))

    def _compare_members(self, old: TypeInfo, new: TypeInfo, type_name: str) -> Comparison:
        old_fields = {m.name: m for m in old.members if m.name}
        new_fields = {m.name: m for m in new.members if m.name}
        renamed = {
            old_name: new_name
            for (t, old_name), new_name in self.transformers.renamed_fields.items()
            if t == type_name and old_name in old_fields and new_name in new_fields
        }
        found: list[str] = []
        removed = []
        for name, member in old_fields.items():
            unexplained = self.unexplained_union(member.type, type_name, name)
            if unexplained and old.kind == "struct":
                found.append(f".{name}: {unexplained}")
                continue
            if name not in new_fields and name not in renamed:
                removed.append(member)
                continue
            if name not in renamed and self.transformers.for_field(type_name, name) is not None:
                self._note(type_name, f"field {name} set by a transformer")
                continue
            target = new_fields[renamed.get(name, name)]
            found += yield (member.type, target.type, f".{name}")
            hinted = self.hinted(self.old_hints.get((type_name, name)))
            if hinted is not None:
                found += yield (*hinted, f".{name}*")
            cut = self._cut_field(type_name, name, member.type, target.type)
            if name in renamed:
                self._note(type_name, f"field {name} renamed to {renamed[name]}")
            elif not cut:
                self._note_field_type(type_name, name, member.type, target.type)
        added = [
            m
            for m in new.members
            if m.name and m.name not in old_fields and m.name not in renamed.values()
        ]
        for member in removed:
            self._drop_field(type_name, member, old.members, added, new.members)
        for member in added:
            if self.transformers.for_field(type_name, member.name) is not None:
                self._note(type_name, f"field {member.name} added (set by a transformer)")
            else:
                self._note(type_name, f"field {member.name} added (keeps v2's initial value)")
        if old.kind == "union" and old.size != new.size:
            self._note(type_name, f"union size {old.size} -> {new.size} bytes")
        return found

    def hinted(self, hint: PointerHint | None) -> tuple[int, int] | None:
        """The v1 type a pointer with a points-to hint reaches, and v2's type of that name,
        which the objects it reaches become (None: no such hint, or v2 has no such type)."""
        if hint is None or hint.kind != "points_to" or hint.target is None:
            return None
        old_tid, new_tid = (by_name(hint.target) for by_name in self.by_name)
        return None if old_tid is None or new_tid is None else (old_tid, new_tid)

    def cut(self, old_tid: int, new_tid: int) -> str:
        """What v2's shorter fixed array throws away of v1's: 'elements 4..7', 'chars
        8..15', 'elements [0..3][2..7]' for an inner dimension ('' when nothing)."""
        old, new = self.old.underlying(old_tid), self.new.underlying(new_tid)
        kept = ""
        while old.kind == new.kind == "array" and old.count and new.count:
            element = self.old.underlying(old.target)
            if new.count < old.count:
                unit = "chars" if element.encoding in CHAR_ENCODINGS else "elements"
                lost = f"{new.count}..{old.count - 1}"
                return f"{unit} {kept}[{lost}]" if kept else f"{unit} {lost}"
            kept += f"[0..{old.count - 1}]"
            old, new = element, self.new.underlying(new.target)
        return ""

    def _cut_field(self, type_name: str, name: str, old_tid: int, new_tid: int) -> bool:
        """Record the tail of an array field that v2 shortens; whether there is one."""
        cut = self.cut(old_tid, new_tid)
        if cut:
            acknowledged = self.transformers.acknowledges(type_name, name)
            c_type = f"{self.old.name(old_tid)} -> {self.new.name(new_tid)}"
            drop = Drop(type_name, name, c_type, acknowledged, cut=cut)
            self.drops[(type_name, name)] = drop
            self._note(type_name, f"field {name}: {c_type}, {cut} dropped ({_state(drop)})")
        return bool(cut)

    def unexplained_union(self, tid: int, type_name: str | None, name: str) -> str | None:
        """Why a union value of `tid` (field `name` of struct `type_name`, or a variable
        when type_name is None) cannot be carried: it holds a pointer and nothing says
        which member is live.  Copied as bytes, a code or heap pointer would be stale."""
        info = self.old.underlying(tid)
        if info.kind != "union":
            return None
        union_name = self.old.name(info.id)
        if self.transformers.for_type(union_name) is not None:
            return None
        if type_name is not None and (
            (type_name, name) in self.old_unions
            or (type_name, name) in self.transformers.union_members
            or self.transformers.for_field(type_name, name) is not None
        ):
            return None
        pointers = [m.name or "?" for m in info.members if holds_pointer(self.old.types, m.type)]
        if not pointers:
            return None
        how = (
            f"EKIDEN_HINT_UNION_MEMBER or EKIDEN_HINT_UNION_CASE on {type_name}.{name}, or "
            f'union_member("{type_name}", "{name}", MEMBER) in a transformer file'
            if type_name is not None
            else "a variable transformer"
        )
        return (
            f"{union_name} holds a pointer ({', '.join(pointers)}) and nothing says which "
            f"member is live; add {how}"
        )

    def _drop_field(
        self,
        type_name: str,
        member: Member,
        old_members: list[Member],
        added: list[Member],
        new_members: list[Member],
    ) -> None:
        """Record a field v2 removed, with the added field that likely renames it: one of
        the same type at the same offset or position, that no transformer sets."""
        name = member.name or ""
        c_type = self.old.name(member.type)
        position = old_members.index(member)
        renamed_to = next(
            (
                m.name
                for m in added
                if self.new.name(m.type) == c_type
                and (m.offset == member.offset or new_members.index(m) == position)
                and self.transformers.for_field(type_name, m.name or "") is None
            ),
            None,
        )
        acknowledged = self.transformers.acknowledges(type_name, name)
        drop = Drop(type_name, name, c_type, acknowledged, renamed_to)
        self.drops[(type_name, name)] = drop
        self._note(type_name, f"field {name} removed (dropped, {_state(drop)})")


def _symbol_problems(old: Program, new: Program) -> list[str]:
    """Functions of v1 that a function pointer may hold but v2 lacks (reported, not blocking)."""
    new_names = {s.name for s in new.elf.symbols() if s.kind == "function"}
    return sorted(
        s.name
        for s in old.elf.symbols()
        # names with a dot are compiler clones (foo.constprop.0, foo.cold), not functions
        if s.kind == "function" and "." not in s.name and s.name not in new_names
    )


def _counterparts(
    old: Program, new: Program, transformers: Transformers
) -> dict[str, TaggedVariable]:
    """v2's tagged variable for each v1 key: as renamed by the transformer file, by key,
    and for a file static whose source file was renamed, by name when that name is a
    single file static in both versions."""
    new_by_key = {t.key: t for t in new.tags}
    found = {t.key: new_by_key[t.key] for t in old.tags if t.key in new_by_key}
    for tag in old.tags:
        renamed = transformers.renamed_variables.get(tag.key) or transformers.renamed_variables.get(
            tag.name
        )
        target = next((t for t in new.tags if renamed in (t.key, t.name)), None)
        if target is not None:
            found[tag.key] = target

    def unique_statics(program: Program) -> dict[str, TaggedVariable]:
        statics = [t for t in program.tags if t.scope == "file_static"]
        names = [t.name for t in statics]
        return {t.name: t for t in statics if names.count(t.name) == 1}

    old_statics, new_statics = unique_statics(old), unique_statics(new)
    taken = {t.key for t in found.values()}
    for name, tag in old_statics.items():
        target = new_statics.get(name)
        if tag.key not in found and target is not None and target.key not in taken:
            found[tag.key] = target
    return found


def plan_update(old: Program, new: Program, transformers: Transformers) -> UpdatePlan:
    """Map every tagged variable of old onto new; nothing here touches a process.

    The plan is cached on disk per pair of binaries, with what else it was computed
    from: the transformers' names and the code of ekiden-trace (see _plan_inputs).
    """
    inputs = _plan_inputs(transformers)
    key = f"{old.build_id}-{new.build_id}-plan"

    def build() -> dict[str, Any]:
        return {"inputs": inputs, "plan": _to_cache(_compute_plan(old, new, transformers))}

    data = load_or_build(key, build)
    if data.get("inputs") != inputs:  # computed by other code, or with other transformers
        data = build()
        store(key, data)
    plan = _from_cache(old, new, data["plan"])
    unmatched = _unmatched(plan, transformers)
    if unmatched:
        raise TransformerError(
            f"the transformer file names what the update does not have: {'; '.join(unmatched)}."
        )
    return plan


def _field_names(program: Program, type_name: str) -> set[str]:
    """The field names of a program's struct or union called type_name (empty: no such type)."""
    tid = program.index.type_by_name(type_name)
    if tid is None:
        return set()
    info = get(program.index.types, strip(program.index.types, tid))
    return {m.name for m in info.members if m.name}


def _union_members(program: Program, type_name: str, name: str) -> set[str]:
    """The member names of the union that is field `name` of a program's `type_name`."""
    types = program.index.types
    tid = program.index.type_by_name(type_name)
    info = get(types, strip(types, tid)) if tid is not None else None
    field = next((m for m in info.members if m.name == name), None) if info else None
    union = get(types, strip(types, field.type)) if field is not None else None
    return {m.name for m in union.members if m.name} if union and union.kind == "union" else set()


def _unmatched(plan: UpdatePlan, transformers: Transformers) -> list[str]:
    """What the transformer file registers that matches nothing: a typo there would
    otherwise leave the state it meant to convert or acknowledge to the defaults."""
    old, new = plan.old, plan.new
    found = []
    for name in transformers.variables:
        if not any(name in (t.key, t.name) for t in new.tags):
            found.append(f'@variable("{name}"): v2 has no tagged variable {name}')
    for name in transformers.types:
        if old.index.type_by_name(name) is None:
            found.append(f'@type_("{name}"): v1 has no type {name}')
    for type_name, name in transformers.fields:
        if name not in _field_names(new, type_name):
            found.append(f'@field("{type_name}", "{name}"): v2\'s {type_name} has no field {name}')
    for (type_name, name), new_name in transformers.renamed_fields.items():
        if name not in _field_names(old, type_name) or new_name not in _field_names(new, type_name):
            found.append(
                f'rename("{type_name}", "{name}", "{new_name}"): v1\'s {type_name} needs a field '
                f"{name} and v2's a field {new_name}"
            )
    for name, new_name in transformers.renamed_variables.items():
        if not any(name in (t.key, t.name) for t in old.tags) or not any(
            new_name in (t.key, t.name) for t in new.tags
        ):
            found.append(
                f'rename("{name}", "{new_name}"): v1 needs a tagged variable {name} and v2 '
                f"one called {new_name}"
            )
    for (type_name, name), member in transformers.union_members.items():
        if member not in _union_members(old, type_name, name):
            found.append(
                f'union_member("{type_name}", "{name}", "{member}"): v1\'s {type_name} needs a '
                f"union field {name} with a member {member}"
            )
    for subject, by in transformers.drops.items():
        if not any(_drops(d, subject) for d in plan.drops):
            what = ", ".join(f'"{s}"' for s in subject)
            where = f"drop({what})" if by == "drop" else f"{by} replaces {what}"
            found.append(f"{where}: the update drops no such state")
    return found


def _drops(drop: Drop, subject: tuple[str, ...]) -> bool:
    """Whether drop(*subject) names this drop: a variable by key or name, or a field."""
    if len(subject) == 2:
        return (drop.type_name, drop.name) == subject
    return drop.type_name is None and (
        drop.name == subject[0] or drop.name.endswith(f":{subject[0]}")
    )


def _plan_inputs(transformers: Transformers) -> dict[str, Any]:
    """What a plan depends on besides the two binaries, as JSON: the names that have
    transformers, and each module of ekiden-trace with its mtime and size (the check
    Python makes on its bytecode caches), so that changed code never reuses a plan."""
    package = Path(__file__).resolve().parent
    code = []
    for module in sorted(package.rglob("*.py")):
        stat = module.stat()
        code.append([str(module.relative_to(package)), stat.st_mtime_ns, stat.st_size])
    return {"format": PLAN_FORMAT, "code": code, "transformers": transformers.names()}


def _to_cache(plan: UpdatePlan) -> dict[str, Any]:
    """A plan as JSON, its tagged variables by key."""
    variables = [
        [
            v.key,
            v.name,
            v.old.key if v.old is not None else None,
            v.new.key if v.new is not None else None,
            v.action,
            v.notes,
            v.problems,
        ]
        for v in plan.variables
    ]
    drops = [d.to_json() for d in plan.drops]
    return {"variables": variables, "type_notes": plan.type_notes, "drops": drops}


def _from_cache(old: Program, new: Program, data: dict[str, Any]) -> UpdatePlan:
    """The plan of _to_cache, its tagged variables found again in the two programs."""
    old_tags = {t.key: t for t in old.tags}
    new_tags = {t.key: t for t in new.tags}
    variables = [
        VariablePlan(
            key,
            name,
            old_tags[old_key] if old_key is not None else None,
            new_tags[new_key] if new_key is not None else None,
            action,
            notes,
            problems,
        )
        for key, name, old_key, new_key, action, notes, problems in data["variables"]
    ]
    problems = [p for v in variables for p in v.problems]
    drops = [Drop(*d) for d in data["drops"]]
    return UpdatePlan(old, new, variables, data["type_notes"], problems, drops)


def _compute_plan(old: Program, new: Program, transformers: Transformers) -> UpdatePlan:
    """The plan itself: each tagged variable of old, its counterpart and its problems."""
    matcher = TypeMatcher(old, new, transformers)
    counterparts = _counterparts(old, new, transformers)
    unmatched = {t.key: t for t in new.tags if t not in counterparts.values()}
    variables: list[VariablePlan] = []
    drops: list[Drop] = []
    for tag in old.tags:
        target = counterparts.get(tag.key)
        key = target.key if target is not None else tag.key
        produced = transformers.for_variable(key, tag.name) if target is not None else None
        if produced is not None:
            variables.append(VariablePlan(key, tag.name, tag, target, "transformer"))
            continue
        if target is None:
            drop = _drop_variable(tag, unmatched.values(), transformers)
            drops.append(drop)
            note = f"likely renamed to {drop.renamed_to}" if drop.renamed_to else None
            notes = ["v2 has no such tagged variable", *filter(None, [note])]
            variables.append(VariablePlan(key, tag.name, tag, None, "dropped", notes=notes))
            continue
        plan = VariablePlan(key, tag.name, tag, target, "transfer")
        plan.problems = matcher.problems(tag.variable.type, target.variable.type, tag.name)
        hinted = matcher.hinted(old.hints.variables.get(tag.name))
        if hinted is not None:
            plan.problems += matcher.problems(*hinted, f"{tag.name}*")
        cut = matcher.cut(tag.variable.type, target.variable.type)
        if cut:
            c_type = f"{tag.c_type} -> {target.c_type}"
            drops.append(Drop(None, tag.key, c_type, _acknowledged(tag, transformers), cut=cut))
            plan.notes.append(f"{cut} dropped")
        unexplained = matcher.unexplained_union(tag.variable.type, None, tag.name)
        if unexplained:
            plan.problems.append(f"{tag.name}: {unexplained}")
        if tag.c_type != target.c_type:
            plan.notes.append(f"{tag.c_type} -> {target.c_type}")
        variables.append(plan)
    for tag in unmatched.values():
        produced = transformers.for_variable(tag.key, tag.name)
        action = "transformer" if produced is not None else "initialised by v2"
        variables.append(VariablePlan(tag.key, tag.name, None, tag, action))
    problems = [p for v in variables for p in v.problems]
    gone = _symbol_problems(old, new)
    if gone:
        matcher.notes["functions"] = [f"gone in v2 (pointers to them fail): {', '.join(gone)}"]
    drops += matcher.drops.values()
    return UpdatePlan(old, new, variables, matcher.notes, problems, drops)


def _drop_variable(
    tag: TaggedVariable, added: Iterable[TaggedVariable], transformers: Transformers
) -> Drop:
    """A tagged variable v2 lacks, with the variable v2 adds that likely renames it: one
    of the same type and scope, in the same function, that no transformer makes."""
    var = tag.variable
    renamed_to = next(
        (
            t.key
            for t in added
            if t.c_type == tag.c_type
            and t.scope == var.scope
            and t.variable.function == var.function
            and transformers.for_variable(t.key, t.name) is None
        ),
        None,
    )
    return Drop(None, tag.key, tag.c_type, _acknowledged(tag, transformers), renamed_to)


def _acknowledged(tag: TaggedVariable, transformers: Transformers) -> str:
    """What in the transformer file lets state of a tagged variable be dropped ('': nothing)."""
    return transformers.acknowledges(tag.key) or transformers.acknowledges(tag.name)
