"""Errors the user can act on, each with its own process exit code."""


class EkidenError(Exception):
    """An error the user can act on: one clear sentence saying what is wrong and what to do."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)


class BinaryError(EkidenError):
    """A binary is unusable (not ELF, no marks, stripped, ...)."""

    exit_code = 2


class TargetError(EkidenError):
    """The pid is wrong, cannot be traced, or is an unsupported target."""

    exit_code = 3


class WaitTimeout(EkidenError):
    """No update point (or awaited stop) was reached in time."""

    exit_code = 4


class TargetExited(EkidenError):
    """The target died while we looked (should never be our fault)."""

    exit_code = 5


def describe_failure(exc: BaseException) -> str:
    """An error's sentence; for an unexpected exception (a bug), its type too."""
    if isinstance(exc, EkidenError):
        return str(exc)
    return f"an internal error ({type(exc).__name__}: {exc})"
