"""Errors of the embedded stack (user-facing: the CLI prints them without a traceback)."""

from __future__ import annotations

from services.errors import WhaleIdError


class StackError(WhaleIdError):
    """The stack cannot do what was asked (already up, not up, a missing binary)."""


class ServerStartError(StackError):
    """A server did not become healthy; the message names it and ends with the tail of its log."""

    def __init__(self, server: str, reason: str, log_tail: str = "") -> None:
        self.server = server
        self.reason = reason
        self.log_tail = log_tail
        message = f"{server} failed to start: {reason}"
        if log_tail:
            message += f"\n--- last lines of the {server} log ---\n{log_tail}"
        super().__init__(message)
