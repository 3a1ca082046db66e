"""The one exception type that the CLI renders as a single line (no traceback).

Raise `UserError` for anything the user can fix: a bad file, a bad option, a missing
table, a job that is already running. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment, shown as one line; exit code `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class AlreadyRunning(UserError):
    """Another job holds the warehouse lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=3)
