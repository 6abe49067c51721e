"""Fault injection for tests: EKIDEN_TRACE_FAULT=PHASE makes the tool fail at PHASE."""

from __future__ import annotations

import os

from .errors import EkidenError

ENV = "EKIDEN_TRACE_FAULT"
_fired: set[str] = set()


class InjectedFault(EkidenError):
    """A failure requested through EKIDEN_TRACE_FAULT, to test error paths."""


def fault_point(phase: str) -> None:
    """Fail here, once per run, when the environment asks for a fault at `phase`."""
    if os.environ.get(ENV) == phase and phase not in _fired:
        _fired.add(phase)
        raise InjectedFault(f"a fault was injected at {phase} ({ENV}={phase}).")
