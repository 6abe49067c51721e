"""The results table: rows, their text view for the terminal, and BENCHMARKS.md."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stats import Summary

DASH = "\u2013"  # en dash, between the two ends of a spread


@dataclass
class Row:
    """One measured figure (or a reason it has none)."""

    section: str
    name: str
    summary: Summary | None = None
    unit: str = ""
    goal: str = ""
    met: bool | None = None
    text: str = ""  # shown instead of a number: "did not finish in 300 s", "skipped: ..."
    fmt: str = ""  # a format spec for the numbers; automatic when empty
    p95: bool = False  # show the p95 next to the median

    def value(self) -> str:
        if self.summary is None:
            return self.text or "-"
        text = _num(self.summary.median, self.fmt) + (f" {self.unit}" if self.unit else "")
        if self.p95 and self.summary.n > 1:
            text += f" (p95 {_num(self.summary.p95, self.fmt)})"
        return text

    def spread(self) -> str:
        s = self.summary
        if s is None or s.n < 2:
            return ""
        return f"{_num(s.lo, self.fmt)}{DASH}{_num(s.hi, self.fmt)} ({s.spread_kind}, n={s.n})"

    def verdict(self) -> str:
        if not self.goal:
            return ""
        if self.met is None:
            return f"{self.goal}: not measured"
        return f"{self.goal}: {'met' if self.met else 'MISSED'}"


@dataclass
class SectionResult:
    """What one section measured: rows for the table, notes for BENCHMARKS.md."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # markdown paragraphs
    failures: int = 0  # measurements that raised

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def attempt(self, section: str, name: str, measure: Callable[[], object]) -> None:
        """Run one measurement; if it fails, a row says why and the section goes on."""
        try:
            measure()
        except Exception as exc:  # one failed figure must not lose the others
            traceback.print_exc()
            self.failures += 1
            self.add(Row(section, name, text=f"failed: {exc}"))


def _num(value: float, fmt: str) -> str:
    if fmt:
        return format(value, fmt)
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


HEADERS = ("", "measure", "median", "spread", "goal")


def _cells(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    return [(r.section, r.name, r.value(), r.spread(), r.verdict()) for r in rows]


def text_table(rows: Sequence[Row]) -> str:
    """The table for a terminal: columns aligned, a text-only row's text running on."""
    cells = [HEADERS, *_cells(rows)]
    numeric = [HEADERS, *(c for c, r in zip(cells[1:], rows, strict=True) if r.summary)]
    widths = [max(len(row[i]) for row in (numeric if i > 1 else cells)) for i in range(5)]
    lines = []
    for i, row in enumerate(cells):
        if i > 0 and rows[i - 1].summary is None:
            row = (*row[:2], " ".join(c for c in row[2:] if c))
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def markdown_table(rows: Sequence[Row]) -> str:
    """The same table in Markdown."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in _cells(rows):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n"


def goals_list(rows: Sequence[Row]) -> str:
    """One line per figure that has a goal: met or missed, with the figure."""
    lines = []
    for row in rows:
        if row.goal:
            verdict = {True: "met", False: "**missed**", None: "not measured"}[row.met]
            figure = f"{row.section[2:]}, {row.name}: {row.value()}"
            lines.append(f"- {figure}; goal {row.goal}: {verdict}")
    return "\n".join(lines) + "\n"


def markdown_document(
    machine: dict[str, str],
    rows: Sequence[Row],
    notes: Sequence[str],
    command: str,
    appendix: str = "",
) -> str:
    """BENCHMARKS.md: the machine, the goals, the table, how each figure was measured, then
    `appendix` (hand-written Markdown, kept from run to run)."""
    parts = [
        "# Benchmarks\n",
        f"Written by `{command}` (bench/run.py). Every figure is a median over "
        "repeated runs, with its spread (min-max below 20 samples, p5-p95 from 20 on). "
        "Each ratio is measured side by side in one run, its A and B samples interleaved "
        "in alternating order (AB BA AB ...), and is the median of the per-pair ratios.\n",
        "## Machine\n",
        "\n".join(f"- **{k}**: {v}" for k, v in machine.items()) + "\n",
        "## Goals\n",
        goals_list(rows),
        "## Results\n",
        markdown_table(rows),
        "## How each figure is measured\n",
        "\n\n".join(notes) + "\n",
        *([appendix] if appendix else []),
    ]
    return "\n".join(parts)
