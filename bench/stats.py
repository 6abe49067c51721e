"""Medians and spreads of repeated measurements."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

PERCENTILE_MIN_N = 20  # below this many samples the spread is min-max, else p5-p95


@dataclass(frozen=True)
class Summary:
    """The median of n samples, the spread around it, and the p95."""

    n: int
    median: float
    lo: float
    hi: float
    p95: float
    spread_kind: str  # "min-max" or "p5-p95"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolated between the closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(values: Sequence[float]) -> Summary:
    """Median and spread of at least one sample."""
    if not values:
        raise ValueError("no samples")
    if len(values) >= PERCENTILE_MIN_N:
        lo, hi, kind = percentile(values, 5), percentile(values, 95), "p5-p95"
    else:
        lo, hi, kind = min(values), max(values), "min-max"
    return Summary(len(values), statistics.median(values), lo, hi, percentile(values, 95), kind)


def scaled(summary: Summary, factor: float) -> Summary:
    """The same summary in other units (factor > 0)."""
    return Summary(
        summary.n,
        summary.median * factor,
        summary.lo * factor,
        summary.hi * factor,
        summary.p95 * factor,
        summary.spread_kind,
    )
