"""gRPC client of the Triton ensemble (`EmbeddingClient`), used by the worker, the tests and `whaleid bench triton`."""

from services.triton_client.client import EmbeddingClient
from services.triton_client.errors import (
    InvalidEmbeddingInput,
    TritonError,
    TritonRequestError,
    TritonUnavailable,
)

__all__ = ["EmbeddingClient", "InvalidEmbeddingInput", "TritonError", "TritonRequestError", "TritonUnavailable"]
