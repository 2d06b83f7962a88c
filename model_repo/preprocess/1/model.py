"""Triton python backend `preprocess`: encoded crop bytes -> the embedders' input, exactly the eval path.

Input  IMAGE  TYPE_STRING [1]     PNG/JPEG/WebP bytes of the crop (the caller crops; see model_repo/README.md)
Output PIXELS TYPE_FP32 [S, S, 3] services.imaging.decode_image + resize_for_model (Pillow bilinear, [0, 255])
Parameters: image_size, max_pixels. A request whose image does not decode fails alone, with the reason.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from services.imaging import decode_image, resize_for_model


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.size = int(parameters["image_size"]["string_value"])
        self.max_pixels = int(parameters["max_pixels"]["string_value"])

    def _pixels(self, encoded: np.ndarray) -> np.ndarray:
        images = []
        for index, item in enumerate(encoded.reshape(-1)):
            if not isinstance(item, (bytes, bytearray)):
                raise ValueError(f"IMAGE #{index}: expected encoded image bytes, got {type(item).__name__}")
            try:
                images.append(resize_for_model(decode_image(bytes(item), self.max_pixels), self.size))
            except Exception as exc:  # noqa: BLE001 - reported to the caller with the item's index
                raise ValueError(f"IMAGE #{index}: {exc}") from None
        return np.stack(images).astype(np.float32)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                pixels = self._pixels(pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy())
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PIXELS", pixels)]))
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the others
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"preprocess: {exc}")))
        return responses
