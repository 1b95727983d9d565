"""One exception type for a user's mistake, carrying a hint on what to do."""

from __future__ import annotations


class ReplearnError(Exception):
    """A user-facing error: the CLI prints ``error: <message> (hint: <hint>)`` and exits 2."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message
