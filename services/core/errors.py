"""Errors with a message meant for the user; the CLI prints them without a traceback. The one errors module of
the project (the Triton client's failure classification is services/serving/triton_client/failures.py)."""


class WhaleIdError(Exception):
    """Base class: a clear, user-facing error (bad input, a server that failed, a refused file)."""


class TransientFailure(WhaleIdError):
    """A server the stage needs (S3, Triton, Redis) is unavailable; retry the same event later."""


class ConfigError(WhaleIdError):
    """A setting is missing or invalid."""


class DataError(WhaleIdError):
    """Input data (CSV, image, embeddings) is invalid; the message names the offending rows or items."""


class StackError(WhaleIdError):
    """The embedded stack cannot do what was asked (already up, not up, a missing binary)."""


class ServerStartError(StackError):
    """A server of the embedded stack did not become healthy; the message names it and ends with the tail of its
    log."""

    def __init__(self, server: str, reason: str, log_tail: str = "") -> None:
        self.server = server
        self.reason = reason
        self.log_tail = log_tail
        message = f"{server} failed to start: {reason}"
        if log_tail:
            message += f"\n--- last lines of the {server} log ---\n{log_tail}"
        super().__init__(message)


class RepositoryError(WhaleIdError):
    """An export or a built Triton repository is refused (missing file, checksum, shape); the message names the
    model."""
