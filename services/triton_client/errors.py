"""Errors of the Triton client (user-facing: the CLI prints them, the worker dead-letters on them)."""

from __future__ import annotations

from services.errors import DataError, WhaleIdError


class TritonError(WhaleIdError):
    """Base class of the client's errors."""


class TritonUnavailable(TritonError):
    """The server could not be reached (or stayed unavailable) after every retry: a transient failure."""


class TritonRequestError(TritonError):
    """The server refused or failed the request (bad image bytes, wrong dtype/shape, model error): permanent."""

    def __init__(self, message: str, status: str = ""):
        super().__init__(message)
        self.status = status


class InvalidEmbeddingInput(TritonError, DataError):
    """The caller's input is not what the model takes (checked before anything is sent)."""
