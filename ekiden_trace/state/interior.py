"""Pointers inside a heap object: the same place in the new version's layout.

A pointer to `&ranges[2].hits` is captured as an offset into the array
`ranges`.  The offset is read as a path (element 2, member `hits`) in the old
element type, and the path is followed in the new one, so the pointer lands
on `hits` however the fields before it changed.  The encoder maps pointers
so; the checks before the exec use the same functions to refuse a pointer
that could not be mapped, before anything is touched.
"""

from __future__ import annotations

from ekiden_trace.binary.dwarf.types import Member, TypeInfo, c_name, get, strip

Path = list[str | int]  # member names and array indices


def _size(types: dict[int, TypeInfo], tid: int | None) -> int:
    return get(types, strip(types, tid)).size or 0


def _holds(types: dict[int, TypeInfo], member: Member, offset: int) -> bool:
    """Whether a named, whole-byte member holds the byte at `offset` of its struct."""
    if member.bit_size or not member.name:
        return False
    return member.offset <= offset < member.offset + _size(types, member.type)


def place_path(types: dict[int, TypeInfo], tid: int, offset: int) -> Path | None:
    """The member names and array indices that lead from the start of a value of type
    `tid` to `offset`; None when `offset` is not the start of a member or an element
    (inside a number, in padding, in a union or a bit-field)."""
    path: Path = []
    while offset:
        info = get(types, strip(types, tid))
        if info.kind == "struct":
            member = next((m for m in info.members if _holds(types, m, offset)), None)
            if member is None:
                return None
            path.append(member.name)
            offset -= member.offset
            tid = member.type
        elif info.kind == "array" and _size(types, info.target):
            index, offset = divmod(offset, _size(types, info.target))
            path.append(index)
            tid = info.target
        else:
            return None
    return path


def path_offset(types: dict[int, TypeInfo], tid: int, path: Path) -> int | None:
    """Where `path` leads in a value of type `tid`; None when the type has no such member,
    or the array no such element."""
    offset = 0
    for step in path:
        info = get(types, strip(types, tid))
        if isinstance(step, str):
            member = next((m for m in info.members if m.name == step), None)
            if info.kind != "struct" or member is None or member.bit_size:
                return None
            offset += member.offset
            tid = member.type
        else:
            if info.kind != "array" or (info.count is not None and step >= info.count):
                return None
            offset += step * _size(types, info.target)
            tid = info.target
    return offset


def _describe(path: Path) -> str:
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)


def moved_offset(
    old_types: dict[int, TypeInfo],
    old_element: int,
    new_types: dict[int, TypeInfo],
    new_element: int,
    offset: int,
) -> int | str:
    """Where a pointer `offset` bytes into an array of `old_element` lands in the same array
    of `new_element`, or why it cannot be carried over."""
    old_size = _size(old_types, old_element)
    if not offset or not old_size:
        return offset
    index, inner = divmod(offset, old_size)
    new_size = _size(new_types, new_element)
    path = place_path(old_types, old_element, inner)
    name = c_name(old_types, old_element)
    if path is None:
        return f"points inside an element of {name}, not at the start of a field"
    new_inner = path_offset(new_types, new_element, path)
    if new_inner is None:
        return f"points to {name}{_describe(path)}, which the new version's type lacks"
    return index * new_size + new_inner
