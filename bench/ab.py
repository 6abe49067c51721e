"""Side-by-side measurements: several kinds interleaved in one run, and per-round ratios."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def interleaved(rounds: int, *measures: Callable[[], Any]) -> list[list[Any]]:
    """`rounds` samples of each measure, taken in rotating order (AB BA AB ... for two,
    ABC BCA CAB ... for three), so a slow drift of the machine cancels out."""
    samples: list[list[Any]] = [[] for _ in measures]
    for i in range(rounds):
        for j in range(len(measures)):
            k = (j + i) % len(measures) if len(measures) > 2 else (j if i % 2 == 0 else 1 - j)
            samples[k].append(measures[k]())
    return samples


def ratios(a: list[float], b: list[float]) -> list[float]:
    """a[i] / b[i] for each round."""
    return [x / y for x, y in zip(a, b, strict=True)]
