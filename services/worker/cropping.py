"""The crop step: the uploader's box when given, else a detector in the Triton repository when one is loaded,
else the whole image. One step, pluggable: `CropStep` objects are tried in order, the first box wins.

Detector contract (optional Triton model, name `settings.triton_detector_model`): input `IMAGE` (TYPE_STRING,
dims [1], PNG/JPEG bytes), outputs `BOX` (TYPE_FP32, dims [4], x0 y0 x1 y1 in pixels) and `SCORE`
(TYPE_FP32, dims [1]); the box is used when the score is at least `DETECTOR_MIN_SCORE`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from services.errors import DataError
from services.imaging import crop, encode_png, validate_box
from services.triton_client.errors import classify
from services.worker.failures import PermanentFailure, TransientFailure

log = logging.getLogger(__name__)
DETECTOR_MIN_SCORE = 0.5


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
    """A detector model served by Triton (see the module doc for its contract)."""

    source = "detector"

    def __init__(self, url: str, model: str, timeout_s: float = 10.0):
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.model = model
        self.timeout_s = timeout_s

    @classmethod
    def if_available(cls, url: str, model: str, timeout_s: float = 10.0) -> "TritonDetector | None":
        """The detector when Triton has the model loaded, else None."""
        if not url:
            return None
        try:
            detector = cls(url, model, timeout_s)
            if detector.client.is_model_ready(model):
                log.info("crop: using the Triton detector model %r", model)
                return detector
        except Exception as exc:  # noqa: BLE001 - no detector is a normal configuration
            log.info("crop: no detector model %r (%s)", model, exc)
        return None

    def find_box(self, image, metadata):
        from tritonclient.utils import InferenceServerException

        data = np.array([[encode_png(image)]], dtype=np.object_)
        inputs = [self._grpc.InferInput("IMAGE", [1, 1], "BYTES")]
        inputs[0].set_data_from_numpy(data)
        try:
            result = self.client.infer(self.model, inputs, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            failure = classify(exc)
            if failure.transient:  # overloaded, unavailable, not loaded: retry the sighting later
                raise TransientFailure(f"detector call failed ({failure.kind}): {exc}") from None
            log.warning("crop: the detector refused the image (%s: %s): next crop step", failure.kind, failure.message)
            return None
        score = float(np.asarray(result.as_numpy("SCORE")).reshape(-1)[0])
        if score < DETECTOR_MIN_SCORE:
            return None
        box = np.asarray(result.as_numpy("BOX"), dtype=np.float64).reshape(-1)[:4]
        try:
            return [float(v) for v in validate_box(box.tolist(), image.shape[1], image.shape[0])]
        except DataError:
            return None  # a degenerate detection: fall back to the next step


def crop_sighting(image: np.ndarray, metadata: dict[str, Any] | None, steps: list[CropStep]) -> Crop:
    """Apply the first step that finds a box; the whole image when none does."""
    for step in steps:
        box = step.find_box(image, metadata or {})
        if box is not None:
            return Crop(crop(image, box), box, step.source)
    return Crop(image, None, "full")
