"""The crop step: the uploader's box when given, else a detector in the Triton repository when one is loaded,
else the whole image. One step, pluggable: `CropStep` objects are tried in order, the first box wins.

Detector contract (optional Triton model, name `settings.triton_detector_model`; `whaleid model-repo build
--detector` builds one): input `IMAGE` (TYPE_STRING, dims [1], encoded image bytes: binary PPM or PNG, see
below), outputs `BOX` (TYPE_FP32, dims [4], x0 y0 x1 y1 in pixels of the image sent), optionally `BOX_NORM`
(the same normalised to 0..1, preferred when present) and `SCORE` (TYPE_FP32, dims [1]); the box is used when
the score is at least `DETECTOR_MIN_SCORE`.

The detector is picked up whenever Triton has it loaded, not only at start: its readiness is asked at most once
every `recheck_s` seconds (one cheap gRPC call, cached in between); while it is not ready the step finds no box
(the whole image is cropped), and a failed call has the readiness asked again on the next one.

Orientation: the worker decodes uploads with services.core.imaging.decode_image, which applies the EXIF orientation,
so the uploader's box, the detector's input and its box are all in the upright frame a viewer sees. The photo
is sent to the detector as those upright pixels (no EXIF left to apply), scaled down first when its longer side
exceeds `DETECTOR_MAX_SIDE` (the detector resizes to its small input anyway), and the box is mapped back. They go
as binary PPM (services.core.imaging.encode_ppm: raw RGB, ~1 ms for a 1024x768 photo) when the model's config
parameter `image_formats` lists PPM (read when its readiness is), else as PNG (~60 ms for that photo here).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from services.chain.failures import PermanentFailure, TransientFailure
from services.core.errors import DataError
from services.core.imaging import (
    FORMATS_PARAMETER,
    crop,
    encode_png,
    encode_ppm,
    parse_formats_parameter,
    validate_box,
)
from services.serving.triton_client.failures import classify

log = logging.getLogger(__name__)
DETECTOR_MIN_SCORE = 0.5
DETECTOR_RECHECK_S = 10.0  # how often a missing (or present) detector's readiness is asked again
DETECTOR_MAX_SIDE = 1024  # longer side of the photo sent to the detector (its box is scaled back)


@dataclass(frozen=True)
class Crop:
    pixels: np.ndarray  # uint8 (h, w, 3)
    box: list[float] | None  # in pixels of the uploaded image; None = whole image
    source: str  # uploader | detector | full


class CropStep(Protocol):
    source: str

    def find_box(self, image: np.ndarray, metadata: dict[str, Any]) -> list[float] | None: ...


class UploaderBox:
    """The box the uploader drew (`metadata.crop_box`); a box that is not usable is a permanent failure."""

    source = "uploader"

    def find_box(self, image, metadata):
        box = (metadata or {}).get("crop_box")
        if box is None:
            return None
        try:
            return [float(v) for v in validate_box(box, image.shape[1], image.shape[0])]
        except (DataError, TypeError, ValueError) as exc:
            raise PermanentFailure("bad_box", str(exc)) from None


class TritonDetector:
    """A detector model served by Triton (see the module doc for its contract and readiness re-checks)."""

    source = "detector"

    def __init__(self, url: str, model: str, timeout_s: float = 10.0, recheck_s: float = DETECTOR_RECHECK_S,
                 clock=time.monotonic):
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.model = model
        self.timeout_s = timeout_s
        self.recheck_s = float(recheck_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._ready: bool | None = None  # None: never asked
        self._checked_at = float("-inf")
        self._formats: frozenset[str] = frozenset()  # the model's `image_formats` parameter (read when ready)

    @classmethod
    def if_available(cls, url: str, model: str, timeout_s: float = 10.0,
                     recheck_s: float = DETECTOR_RECHECK_S) -> "TritonDetector | None":
        """The detector step whenever there is a Triton to ask (None without a Triton address); it uses the
        model from the moment Triton has it loaded (re-checked every `recheck_s` seconds)."""
        if not url:
            return None
        try:
            detector = cls(url, model, timeout_s, recheck_s)
        except Exception as exc:  # noqa: BLE001 - no detector is a normal configuration
            log.info("crop: no detector model %r (%s)", model, exc)
            return None
        detector.ready()
        return detector

    def ready(self) -> bool:
        """Whether Triton has the model loaded; asked at most once per `recheck_s` (cached in between)."""
        now = self._clock()
        with self._lock:
            if now - self._checked_at < self.recheck_s and self._ready is not None:
                return self._ready
            self._checked_at = now
        try:
            ready = bool(self.client.is_model_ready(self.model, client_timeout=min(self.timeout_s, 2.0)))
        except Exception:  # noqa: BLE001 - Triton down or the model unknown: not ready, ask again later
            ready = False
        if ready:
            self._formats = self._image_formats()
        self._set_ready(ready)
        return ready

    def _image_formats(self) -> frozenset[str]:
        """The detector's config parameter `image_formats` (what it decodes; empty for a build made before it)."""
        try:
            config = self.client.get_model_config(self.model, as_json=True,
                                                  client_timeout=min(self.timeout_s, 2.0)).get("config", {})
            value = config.get("parameters", {}).get(FORMATS_PARAMETER, {}).get("string_value", "")
        except Exception:  # noqa: BLE001 - PNG then, which every build reads
            return frozenset()
        return parse_formats_parameter(value)

    def _set_ready(self, ready: bool) -> None:
        with self._lock:
            changed, self._ready = self._ready != ready, ready
        if changed:
            if ready:
                log.info("crop: using the Triton detector model %r", self.model)
            else:
                log.info("crop: the Triton detector model %r is not loaded: whole images until it is (asked again "
                         "every %.0f s)", self.model, self.recheck_s)

    @staticmethod
    def _scaled(image: np.ndarray) -> tuple[np.ndarray, float]:
        """The image to send (longer side at most DETECTOR_MAX_SIDE) and the factor back to the original."""
        height, width = image.shape[:2]
        longer = max(height, width)
        if longer <= DETECTOR_MAX_SIDE:
            return image, 1.0
        from PIL import Image

        factor = DETECTOR_MAX_SIDE / longer
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)), 1.0 / factor

    def find_box(self, image, metadata):
        from tritonclient.utils import InferenceServerException

        if not self.ready():
            return None
        sent, back = self._scaled(image)
        encoded = encode_ppm(sent) if "PPM" in self._formats else encode_png(sent)
        data = np.array([[encoded]], dtype=np.object_)
        inputs = [self._grpc.InferInput("IMAGE", [1, 1], "BYTES")]
        inputs[0].set_data_from_numpy(data)
        try:
            result = self.client.infer(self.model, inputs, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            failure = classify(exc)
            if failure.transient:  # overloaded, unavailable, not loaded: retry the sighting later
                with self._lock:  # unloaded, perhaps: the next call asks again (and goes without it if so)
                    self._checked_at = float("-inf")
                raise TransientFailure(f"detector call failed ({failure.kind}): {exc}") from None
            log.warning("crop: the detector refused the image (%s: %s): next crop step", failure.kind, failure.message)
            return None
        score = float(np.asarray(result.as_numpy("SCORE")).reshape(-1)[0])
        if score < DETECTOR_MIN_SCORE:
            return None
        height, width = image.shape[:2]
        normalised = result.as_numpy("BOX_NORM")
        if normalised is not None:
            box = np.asarray(normalised, dtype=np.float64).reshape(-1)[:4] * [width, height, width, height]
        else:
            box = np.asarray(result.as_numpy("BOX"), dtype=np.float64).reshape(-1)[:4] * back
        try:
            return [float(v) for v in validate_box(box.tolist(), width, height)]
        except DataError:
            return None  # a degenerate detection: fall back to the next step


def crop_sighting(image: np.ndarray, metadata: dict[str, Any] | None, steps: list[CropStep]) -> Crop:
    """Apply the first step that finds a box; the whole image when none does."""
    for step in steps:
        box = step.find_box(image, metadata or {})
        if box is not None:
            return Crop(crop(image, box), box, step.source)
    return Crop(image, None, "full")
