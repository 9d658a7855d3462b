"""The status/error model shared by every process and by the control API.

A `Status` carries a code and context chained outer-to-inner, so that an operator reads
`Does Not Exist: Failed to get interface index: Interface eth0 does not exist`: the
outermost caller's words first, the root cause last.  `PortierError` carries a Status
through code that prefers exceptions.  This module never logs and never does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Code(IntEnum):
    """Outcome codes; the numbers are part of the wire schema and never change."""

    OK = 0
    DOES_NOT_EXIST = 1
    ALREADY_EXISTS = 2
    NO_OPERATION = 3
    INVALID_ARGUMENT = 4
    FAILED_PRECONDITION = 5
    UNEXPECTED_FAILURE = 6
    RESULT_UNAVAILABLE = 7
    BAD_PERMISSIONS = 8
    MALFORMED_PACKET = 9
    MTU_EXCEEDED = 10
    RESOURCE_IN_USE = 11
    UNSUPPORTED_TYPE = 12
    BAD_INTERNAL_STATE = 13
    TIMEOUT = 14

    @property
    def display_name(self) -> str:
        return _DISPLAY.get(self.name, self.name.replace("_", " ").title())


_DISPLAY = {"OK": "OK", "MTU_EXCEEDED": "MTU Exceeded"}


def code_display(code: int) -> str:
    """Display name of a numeric code; unknown numbers print as `Unknown (n)`."""
    try:
        return Code(code).display_name
    except ValueError:
        return f"Unknown ({code})"


@dataclass(frozen=True, slots=True)
class Status:
    """An outcome: a code plus context, outermost first (`message`, then `detail`)."""

    code: int = Code.OK
    message: str = ""
    detail: str = ""

    def __bool__(self) -> bool:
        return self.code == Code.OK

    @property
    def ok(self) -> bool:
        return self.code == Code.OK

    def wrap(self, context: str) -> Status:
        """Pass the status up with the caller's context in front; OK stays plain OK."""
        if self.ok:
            return self
        inner = ": ".join(part for part in (self.message, self.detail) if part)
        return Status(self.code, context, inner)

    def text(self) -> str:
        """Everything after the code's display name, chained with ': '."""
        return ": ".join(part for part in (self.message, self.detail) if part)

    def __str__(self) -> str:
        return ": ".join(part for part in (code_display(self.code), self.text()) if part)


OK = Status()


def error(code: Code, message: str) -> Status:
    return Status(code, message)


class PortierError(Exception):
    """An exception that carries a Status, for code paths where raising reads better."""

    def __init__(self, status: Status) -> None:
        super().__init__(str(status))
        self.status = status

    @classmethod
    def of(cls, code: Code, message: str) -> PortierError:
        return cls(Status(code, message))

    def wrap(self, context: str) -> PortierError:
        return PortierError(self.status.wrap(context))
