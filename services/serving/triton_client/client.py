"""gRPC client of the Triton ensemble: encoded crops in, blended L2-normalised embeddings out.

    client = EmbeddingClient("127.0.0.1:8001")          # or EmbeddingClient.from_settings()
    client.ready()                                       # server live and the model ready
    client.model_versions()                              # {"ensemble": ["1"], "embedder_...": ["1"], ...}
    client.embed([png_bytes, jpeg_bytes])                # -> float32 (2, 512)
    client.embed_with_species([png_bytes])               # -> ((1, 512), (1, S) probabilities or None)
    client.species_names()                               # names of the SPECIES columns ([]: no species output)

A lean repository's `ensemble` (`model-repo build --lean`) is one step, `pipeline`, with its tensors passed
through unchanged: the client sends the requests to that step itself (read from the ensemble's config once, as
the max batch size is), which spares each request Triton's ensemble scheduler (0.3 ms of a 6-8 ms batch-1
request here); any other ensemble, or a step that is not loaded any more, goes through the ensemble.

Failures are classified in one place (`services.serving.triton_client.failures.classify`): overload and unavailability
(UNAVAILABLE incl. connection refused/reset, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, a full queue) are retried
with exponential backoff and end in TritonUnavailable; every other server error is a TritonRequestError carrying
the server's message (e.g. which image failed to decode) and `.transient` (True for a model that is not loaded).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable, Mapping, Sequence, TypeVar

import numpy as np

from services.core.metrics import TRITON_LATENCY, TRITON_RETRIES
from services.serving.triton_client.failures import (
    InvalidEmbeddingInput,
    TritonRequestError,
    TritonUnavailable,
    classify_status,
)

log = logging.getLogger(__name__)

INPUT = "IMAGE"
OUTPUT = "EMBEDDING"
SPECIES = "SPECIES"  # optional second output of the ensemble: species probabilities (names: parameter `species`)
# the encoded images of one request at most (a batch of large raw PPM crops is split; one larger image goes alone):
# bounds the gRPC message and the python backend's shared-memory copy of it
REQUEST_MAX_BYTES = 64 * 2**20
T = TypeVar("T")


def request_chunks(sizes: Sequence[int], max_items: int, max_bytes: int) -> list[range]:
    """Consecutive index ranges of at most `max_items` items and `max_bytes` bytes each (an item larger than
    `max_bytes` alone), covering every item in order."""
    chunks, start, total = [], 0, 0
    for index, size in enumerate(sizes):
        if index > start and (index - start >= max_items or total + size > max_bytes):
            chunks.append(range(start, index))
            start, total = index, 0
        total += size
    if start < len(sizes):
        chunks.append(range(start, len(sizes)))
    return chunks


def passthrough_step(config: dict) -> str | None:
    """The model of an ensemble config's single step when that step takes the ensemble's inputs and gives its
    outputs under the same names, at its latest version (what a lean repository's `ensemble` is); else None."""
    if config.get("platform") != "ensemble":
        return None
    steps = (config.get("ensemble_scheduling") or {}).get("step") or []
    if len(steps) != 1 or str(steps[0].get("model_version", -1)) != "-1":
        return None
    step = steps[0]
    inputs = {i.get("name") for i in config.get("input", [])}
    outputs = {o.get("name") for o in config.get("output", [])}
    input_map, output_map = step.get("input_map") or {}, step.get("output_map") or {}
    if (set(input_map.items()) != {(n, n) for n in inputs}
            or set(output_map.items()) != {(n, n) for n in outputs}):
        return None
    return step.get("model_name") or None


class EmbeddingClient:
    def __init__(
        self,
        url: str,
        model: str = "ensemble",
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
    ) -> None:
        import tritonclient.grpc as grpcclient

        if not url:
            raise TritonUnavailable("no Triton gRPC address: start the stack (whaleid stack up) or set "
                                    "WHALEID_TRITON_GRPC_URL=host:port")
        self.url = url
        self.model = model
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(url=url)
        self._max_batch: int | None = None
        self._species: list[str] | None = None
        self._target: str | None = None  # the model the inference requests go to (see `infer_target`)

    @classmethod
    def from_settings(cls, settings=None, **overrides) -> "EmbeddingClient":
        """A client for `settings.triton_grpc_url` / `.triton_model` / `.triton_timeout_s`."""
        if settings is None:
            from services.core.settings import load_settings

            settings = load_settings()
        kwargs = {"url": settings.triton_grpc_url, "model": settings.triton_model,
                  "timeout_s": settings.triton_timeout_s, **overrides}
        return cls(**kwargs)

    # --- health and versions
    def ready(self) -> bool:
        """True when the server is live and the model is ready (no retries, never raises)."""
        try:
            return bool(self._client.is_server_live() and self._client.is_model_ready(self.model))
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    def wait_ready(self, timeout_s: float = 60.0, interval_s: float = 0.25) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise TritonUnavailable(f"model {self.model!r} at {self.url} not ready after {timeout_s:.0f} s")
            time.sleep(interval_s)

    def model_versions(self) -> dict[str, list[str]]:
        """The ready models of the server and their versions, e.g. {"ensemble": ["1"], ...}."""
        index = self._call(lambda: self._client.get_model_repository_index(as_json=True,
                                                                          client_timeout=self.timeout_s))
        versions: dict[str, list[str]] = {}
        for entry in index.get("models", []):
            if entry.get("state") == "READY":
                versions.setdefault(entry["name"], []).append(str(entry.get("version", "")))
        return {name: sorted(v) for name, v in sorted(versions.items())}

    def model_parameters(self) -> dict[str, str]:
        """The string parameters of the model's config (the ensemble carries `build_id` and `model_ids`)."""
        config = self._model_config()
        return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}

    def model_version(self) -> str:
        """One tag for the served embeddings: `<model>:<version>[:<build_id>]`, stored with each embedding."""
        versions = self.model_versions().get(self.model)
        if not versions:
            raise TritonUnavailable(f"model {self.model!r} is not ready at {self.url}")
        build = self.model_parameters().get("build_id", "")
        return f"{self.model}:{versions[-1]}" + (f":{build}" if build else "")

    def species_names(self) -> list[str]:
        """The names of the SPECIES output's columns (the ensemble parameter `species`); [] when the served
        models have no species head (asked once, then cached)."""
        if self._species is None:
            outputs = {o.get("name") for o in self._model_config().get("output", [])}
            text = self.model_parameters().get("species", "") if SPECIES in outputs else ""
            self._species = [str(n) for n in json.loads(text)] if text else []
        return list(self._species)

    def forget_config(self) -> None:
        """Drop the cached max batch size, species names and inference target (the served repository may have
        changed)."""
        self._max_batch, self._species, self._target = None, None, None

    def infer_target(self) -> str:
        """The model inference requests go to: the one step of an ensemble that only passes its tensors through
        (the lean layout's `pipeline`), else the model itself. Read once, then cached."""
        if self._target is None:
            self._target = passthrough_step(self._model_config()) or self.model
        return self._target

    # --- inference
    def embed(self, images: Sequence[bytes]) -> np.ndarray:
        """Encoded crops (PNG/JPEG/WebP bytes) -> float32 (N, D) blended embeddings; batches are split to the
        model's max_batch_size."""
        return self._run(images, (OUTPUT,))[OUTPUT]

    def embed_with_species(self, images: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray | None]:
        """(embeddings (N, D), species probabilities (N, len(species_names())) or None when the ensemble has no
        SPECIES output), from one request per batch."""
        if not self.species_names():
            return self.embed(images), None
        out = self._run(images, (OUTPUT, SPECIES))
        return out[OUTPUT], out[SPECIES]

    def _run(self, images: Sequence[bytes], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        if isinstance(images, (bytes, bytearray, np.ndarray, str)):
            raise InvalidEmbeddingInput("embed() takes a list of encoded images (bytes), not a single "
                                        f"{type(images).__name__}")
        items = list(images)
        bad = [i for i, item in enumerate(items) if not isinstance(item, (bytes, bytearray)) or not item]
        if bad:
            kinds = ", ".join(f"#{i}: {type(items[i]).__name__}" + (" (empty)" if isinstance(items[i], (bytes, bytearray))
                                                                     else "") for i in bad[:5])
            raise InvalidEmbeddingInput(f"embed() needs non-empty encoded image bytes; invalid item(s) {kinds}")
        if not items:
            return {name: np.zeros((0, self.embedding_size() if name == OUTPUT else len(self.species_names())),
                                   dtype=np.float32) for name in outputs}
        parts = []
        for chunk in request_chunks([len(b) for b in items], self.max_batch_size(), REQUEST_MAX_BYTES):
            batch = np.array([[bytes(items[i])] for i in chunk], dtype=np.object_)
            parts.append(self.infer_outputs({INPUT: batch}, outputs))
        return {name: np.concatenate([p[name] for p in parts], axis=0) for name in outputs}

    def infer(self, inputs: Mapping[str, np.ndarray], output: str = OUTPUT) -> np.ndarray:
        """One raw request (used by embed); server-side refusals become TritonRequestError."""
        return self.infer_outputs(inputs, (output,))[output]

    def infer_outputs(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """One raw request for several outputs, each (rows, D) float32."""
        request = []
        for name, array in inputs.items():
            array = np.asarray(array)
            datatype = "BYTES" if array.dtype == np.object_ else self._grpc.np_to_triton_dtype(array.dtype)
            tensor = self._grpc.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            request.append(tensor)
        requested = [self._grpc.InferRequestedOutput(name) for name in outputs]
        started = time.perf_counter()
        target = self.infer_target()
        try:
            result = self._call(lambda: self._client.infer(target, request, outputs=requested,
                                                           client_timeout=self.timeout_s))
        except TritonRequestError as exc:
            if target == self.model or classify_status(exc.status).kind != "model_not_loaded":
                raise
            self._target = self.model  # the step went away (another repository): through the ensemble again
            result = self._call(lambda: self._client.infer(self.model, request, outputs=requested,
                                                           client_timeout=self.timeout_s))
        TRITON_LATENCY.observe(time.perf_counter() - started)
        rows = next(iter(inputs.values())).shape[0]
        values = {}
        for name in outputs:
            array = result.as_numpy(name)
            if array is None or array.ndim != 2 or array.shape[0] != rows:
                raise TritonRequestError(f"model {self.model!r} returned {name} of shape "
                                         f"{None if array is None else array.shape}; expected ({rows}, D)")
            values[name] = array.astype(np.float32, copy=False)
        return values

    def max_batch_size(self) -> int:
        if self._max_batch is None:
            self._max_batch = int(self._model_config().get("max_batch_size", 0)) or 1
        return self._max_batch

    def embedding_size(self) -> int:
        for output in self._model_config().get("output", []):
            if output.get("name") == OUTPUT:
                return int(output["dims"][-1])
        raise TritonRequestError(f"model {self.model!r} has no output {OUTPUT!r}")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "EmbeddingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- internals
    def _model_config(self) -> dict:
        config = self._call(lambda: self._client.get_model_config(self.model, as_json=True,
                                                                  client_timeout=self.timeout_s))
        return config.get("config", config)

    def _call(self, request: Callable[[], T]) -> T:
        """Run one request, retrying transient failures with exponential backoff."""
        from tritonclient.utils import InferenceServerException

        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return request()
            except InferenceServerException as exc:
                status = str(exc.status() or "")
                message = exc.message() or str(exc)
                failure = classify_status(status, message)
                if not failure.retried_by_client:
                    raise TritonRequestError(f"Triton refused the request to {self.model!r} at {self.url}: "
                                             f"{message} [{status or 'no status'}]", status) from None
                if attempt == self.retries:
                    raise TritonUnavailable(f"Triton at {self.url} {failure.kind} after {self.retries + 1} "
                                            f"attempt(s): {message} [{status}]", status, failure.kind) from None
                TRITON_RETRIES.inc()
                log.warning("Triton at %s unavailable (%s); retry %d/%d in %.2f s", self.url, message,
                            attempt + 1, self.retries, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
        raise AssertionError("unreachable")

