"""gRPC client of the Triton ensemble (`EmbeddingClient`), used by the worker, the tests and `whaleid bench triton`."""

from services.serving.triton_client.client import EmbeddingClient
from services.serving.triton_client.failures import (
    InvalidEmbeddingInput,
    TritonError,
    TritonFailure,
    TritonRequestError,
    TritonUnavailable,
    classify,
    is_transient,
)

__all__ = ["EmbeddingClient", "InvalidEmbeddingInput", "TritonError", "TritonFailure", "TritonRequestError",
           "TritonUnavailable", "classify", "is_transient"]
