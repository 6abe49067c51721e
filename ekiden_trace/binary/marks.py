"""The marks of a binary, as probes/ekiden.h records them.

Update points are USDT probes of provider "ekiden" (.note.stapsdt); tags,
`from` marks, hints and the control block address are records of
.note.ekiden.  All addresses here are link-time addresses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ekiden_trace.binary.elf import ElfBinary
from ekiden_trace.errors import BinaryError

PROVIDER = "ekiden"
NOTE_TAG, NOTE_FROM, NOTE_HINT, NOTE_CONTROL = 1, 2, 3, 4


@dataclass(frozen=True)
class PointMark:
    """An update point: its name and code address."""

    name: str
    pc: int


@dataclass(frozen=True)
class SiteMark:
    """A tag or `from` mark: the name written in it, its code address and source file."""

    name: str
    pc: int
    file: str


@dataclass(frozen=True)
class HintMark:
    """A pointer hint written in C: kind, subject (a type, or '' for a variable) and arguments."""

    kind: str
    subject: str
    field: str
    arg: str
    member: str
    file: str


@dataclass
class Marks:
    """Every mark of one binary."""

    points: list[PointMark] = field(default_factory=list)
    tags: list[SiteMark] = field(default_factory=list)
    froms: list[SiteMark] = field(default_factory=list)
    hints: list[HintMark] = field(default_factory=list)
    control: int | None = None


def _strings(blob: bytes) -> list[str]:
    return [part.decode("latin-1") for part in blob.split(b"\0")]


def read_marks(binary: ElfBinary) -> Marks:
    """Read the marks of a binary; BinaryError if it has none."""
    marks = Marks()
    base_actual = binary.section_address(".stapsdt.base")
    for note in binary.notes():
        if note.name == "stapsdt" and note.type == 3:
            pc, base, _semaphore = struct.unpack_from("<QQQ", note.desc)
            provider, name = _strings(note.desc[24:])[:2]
            if provider != PROVIDER:
                continue
            if base_actual is not None and base:
                pc += base_actual - base  # prelink adjustment, as sdt.h documents
            marks.points.append(PointMark(name, pc))
        elif note.name == "ekiden":
            (pc,) = struct.unpack_from("<Q", note.desc)
            source, *args = _strings(note.desc[8:])
            if note.type == NOTE_TAG:
                marks.tags.append(SiteMark(args[0], pc, source))
            elif note.type == NOTE_FROM:
                marks.froms.append(SiteMark(args[0], pc, source))
            elif note.type == NOTE_HINT:
                kind, subject, fld, arg, member = args[:5]
                marks.hints.append(HintMark(kind, subject, fld, arg, member, source))
            elif note.type == NOTE_CONTROL:
                marks.control = pc
    if marks.control is None:
        raise BinaryError(
            f"{binary.name} has no ekiden marks; include probes/ekiden.h "
            "(see `ekiden-trace cflags`) and mark its update points and state."
        )
    return marks
