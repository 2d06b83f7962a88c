"""Errors of the model repository builder (user-facing)."""

from services.errors import WhaleIdError


class RepositoryError(WhaleIdError):
    """An export or a built repository is refused (missing file, checksum, shape); the message names the model."""
