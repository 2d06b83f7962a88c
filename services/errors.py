"""Errors with a message meant for the user; the CLI prints them without a traceback."""


class WhaleIdError(Exception):
    """Base class: a clear, user-facing error (bad input, a server that failed, a refused file)."""


class ConfigError(WhaleIdError):
    """A setting is missing or invalid."""


class DataError(WhaleIdError):
    """Input data (CSV, image, embeddings) is invalid; the message names the offending rows or items."""
