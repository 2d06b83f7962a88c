"""Errors of the Triton client (user-facing: the CLI prints them) and the one place Triton failures are classified.

`classify(exc)` decides, from tritonclient's exceptions (their gRPC/HTTP status and message), whether a failed
call says something about *the input* (permanent: retrying the same crop cannot help) or about *the server*
(transient: retry later, never give up on the sighting):

    kind              transient  when
    overloaded        yes        DEADLINE_EXCEEDED (client timeout), RESOURCE_EXHAUSTED, "exceeds maximum queue
                                 size" (a full dynamic-batching queue; Triton sends it as UNAVAILABLE), HTTP 408/429
    unavailable       yes        UNAVAILABLE (connection refused/reset, server restarting), CANCELLED, ABORTED,
                                 HTTP 502/503/504, a crashed python-backend stub, out of memory
    model_not_loaded  yes        NOT_FOUND ("unknown model", "has no available versions": unloaded or reloading),
                                 HTTP 404
    unclassified      yes        any other status or none (auth, UNIMPLEMENTED, a broken response...): a deployment
                                 problem, never the input's fault
    refused_input     no         INVALID_ARGUMENT, OUT_OF_RANGE, HTTP 400: the model refuses this input
    model_error       no         INTERNAL, UNKNOWN, HTTP 500: the model failed on this input (e.g. the python
                                 backend's "preprocess: IMAGE #0: not_an_image")

A message that names overload or unavailability wins over the status (an INTERNAL "stub process is not healthy"
is transient). The client retries `overloaded` and `unavailable` itself (`EmbeddingClient(retries=...)`), then
raises TritonUnavailable; every other server answer is a TritonRequestError whose `.transient` is the
classification (a model that is not loaded is a request error for a CLI, but the worker waits for it).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.core.errors import DataError, WhaleIdError

TRANSIENT_KINDS = ("overloaded", "unavailable", "model_not_loaded", "unclassified")
PERMANENT_KINDS = ("refused_input", "model_error")
CLIENT_RETRIED_KINDS = ("overloaded", "unavailable")  # worth retrying within one client call

_STATUS_KINDS = {
    "DEADLINE_EXCEEDED": "overloaded",
    "RESOURCE_EXHAUSTED": "overloaded",
    "UNAVAILABLE": "unavailable",
    "CANCELLED": "unavailable",
    "ABORTED": "unavailable",
    "NOT_FOUND": "model_not_loaded",
    "INVALID_ARGUMENT": "refused_input",
    "OUT_OF_RANGE": "refused_input",
    "INTERNAL": "model_error",
    "UNKNOWN": "model_error",
    # tritonclient.http reports the HTTP status code as the status
    "400": "refused_input",
    "404": "model_not_loaded",
    "408": "overloaded",
    "429": "overloaded",
    "500": "model_error",
    "502": "unavailable",
    "503": "unavailable",
    "504": "overloaded",
}
# lower-case fragments of messages that mean "the server, not the input", whatever the status says
_OVERLOAD_MESSAGES = ("exceeds maximum queue size", "deadline exceeded", "timed out", "timeout",
                      "resource exhausted", "too many requests")
_UNAVAILABLE_MESSAGES = ("failed to connect", "connection refused", "connection reset", "socket closed",
                         "broken pipe", "stub process", "server is shutting down", "is not ready",
                         "out of memory", "failed to allocate")


@dataclass(frozen=True)
class TritonFailure:
    """How one failed Triton call is to be treated."""

    kind: str  # one of TRANSIENT_KINDS / PERMANENT_KINDS
    status: str  # e.g. "DEADLINE_EXCEEDED" ("" when none)
    message: str

    @property
    def transient(self) -> bool:
        return self.kind in TRANSIENT_KINDS

    @property
    def retried_by_client(self) -> bool:
        return self.kind in CLIENT_RETRIED_KINDS


def _status_name(status) -> str:
    """'StatusCode.DEADLINE_EXCEEDED' / grpc.StatusCode.X / 503 -> 'DEADLINE_EXCEEDED' / '503'."""
    if status is None:
        return ""
    name = getattr(status, "name", None)  # a grpc.StatusCode member
    text = str(name if name else status).strip()
    return text.rsplit(".", 1)[-1].upper()


def classify_status(status, message: str = "") -> TritonFailure:
    """The classification of a status (gRPC name, 'StatusCode.X' or HTTP code) and message."""
    name = _status_name(status)
    text = (message or "").lower()
    if any(fragment in text for fragment in _OVERLOAD_MESSAGES):
        kind = "overloaded"
    elif any(fragment in text for fragment in _UNAVAILABLE_MESSAGES):
        kind = "unavailable"
    else:
        kind = _STATUS_KINDS.get(name, "unclassified")
    return TritonFailure(kind, name, message or "")


def classify(exc: BaseException) -> TritonFailure:
    """Classify any exception raised by a Triton call (tritonclient, grpc, this package's errors, OS errors)."""
    if isinstance(exc, InvalidEmbeddingInput):
        return TritonFailure("refused_input", "", str(exc))
    if isinstance(exc, TritonUnavailable):
        return TritonFailure(exc.kind or "unavailable", exc.status, str(exc))
    if isinstance(exc, TritonRequestError):
        return classify_status(exc.status, str(exc))
    try:
        from tritonclient.utils import InferenceServerException
    except ImportError:  # pragma: no cover - tritonclient is a dependency
        InferenceServerException = ()  # noqa: N806
    if InferenceServerException and isinstance(exc, InferenceServerException):
        return classify_status(exc.status(), exc.message() or str(exc))
    code = getattr(exc, "code", None)
    if callable(code):  # a grpc.RpcError that tritonclient did not wrap
        try:
            return classify_status(code(), str(getattr(exc, "details", lambda: "")() or exc))
        except Exception:  # noqa: BLE001 - not a grpc error after all
            pass
    if isinstance(exc, TimeoutError):
        return TritonFailure("overloaded", "", str(exc))
    if isinstance(exc, (ConnectionError, OSError)):
        return TritonFailure("unavailable", "", str(exc))
    return TritonFailure("unclassified", "", f"{type(exc).__name__}: {exc}")


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same request later can succeed (the server, not the input, failed)."""
    return classify(exc).transient


class TritonError(WhaleIdError):
    """Base class of the client's errors."""


class TritonUnavailable(TritonError):
    """The server could not be reached, timed out or was overloaded after every retry: a transient failure."""

    def __init__(self, message: str, status: str = "", kind: str = "unavailable"):
        super().__init__(message)
        self.status = status
        self.kind = kind


class TritonRequestError(TritonError):
    """The server refused or failed the request; `.transient` (from `classify`) says whether a later retry can
    help (a model that is not loaded) or not (bad image bytes, wrong dtype/shape, a model error)."""

    def __init__(self, message: str, status: str = ""):
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        return classify(self).transient


class InvalidEmbeddingInput(TritonError, DataError):
    """The caller's input is not what the model takes (checked before anything is sent)."""
