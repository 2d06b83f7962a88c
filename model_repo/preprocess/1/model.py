"""Triton python backend `preprocess`: encoded crop bytes -> the embedders' input, exactly the eval path.

Input  IMAGE  TYPE_STRING [1]     JPEG/PNG/WebP bytes of the crop, or the worker's binary PPM (TRANSFER_FORMATS)
Output PIXELS TYPE_FP32 [S, S, 3] decode_image + resize_for_model (Pillow bilinear, [0, 255]) of
       whaleid_imaging.py, the copy of services.core.imaging that `whaleid model-repo build` vendors next to this file
       PIXELS_FLIP (flip TTA only) the same of the crop mirrored left-right before the resize, as
       `whaleid evaluate --flip-tta` mirrors the image (training.identification_commands.embed_images)
Parameters: image_size, max_pixels, flip_tta, pillow_version (the build's: another Pillow may decode or resize
differently, so a mismatch is logged as a warning). A request whose image does not decode fails alone, with the
reason.
Imports only numpy, Pillow (through whaleid_imaging) and Triton's utilities: the project need not be installed.
"""

import json

import numpy as np
import PIL
import triton_python_backend_utils as pb_utils
from whaleid_imaging import TRANSFER_FORMATS, decode_image, resize_for_model


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.size = int(parameters["image_size"]["string_value"])
        self.max_pixels = int(parameters["max_pixels"]["string_value"])
        self.flip_tta = parameters.get("flip_tta", {}).get("string_value", "false") == "true"
        built_with = parameters.get("pillow_version", {}).get("string_value", "")
        if built_with and built_with != PIL.__version__:
            pb_utils.Logger.log_warn(f"preprocess: Pillow {PIL.__version__} here, the repository was built with "
                                     f"Pillow {built_with}: pixels may differ from the offline path")

    def _views(self, image: np.ndarray) -> list:
        views = [resize_for_model(image, self.size)]
        if self.flip_tta:
            views.append(resize_for_model(np.ascontiguousarray(image[:, ::-1]), self.size))
        return views

    def _tensors(self, encoded: np.ndarray) -> list:
        """[PIXELS (N, S, S, 3)] (+ PIXELS_FLIP); each image is resized right after decoding (no full-size batch)."""
        rows = []
        for index, item in enumerate(encoded.reshape(-1)):
            if not isinstance(item, (bytes, bytearray)):
                raise ValueError(f"IMAGE #{index}: expected encoded image bytes, got {type(item).__name__}")
            try:
                rows.append(self._views(decode_image(bytes(item), self.max_pixels, formats=TRANSFER_FORMATS)))
            except Exception as exc:  # noqa: BLE001 - reported to the caller with the item's index
                raise ValueError(f"IMAGE #{index}: {exc}") from None
        names = ("PIXELS", "PIXELS_FLIP")[: len(rows[0])] if rows else ("PIXELS",)
        return [pb_utils.Tensor(name, np.stack([row[v] for row in rows]).astype(np.float32))
                for v, name in enumerate(names)]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                tensors = self._tensors(pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy())
                responses.append(pb_utils.InferenceResponse(tensors))
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the others
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"preprocess: {exc}")))
        return responses
