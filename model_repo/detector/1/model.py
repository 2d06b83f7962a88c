"""Triton python backend `detector`: a photo -> the main animal's box and a score (the worker's crop step).

Input  IMAGE    TYPE_STRING [1]  JPEG/PNG/WebP bytes of the whole photo, or its pixels as binary PPM
Output BOX      TYPE_FP32 [4]    x0 y0 x1 y1 in pixels of the decoded (EXIF-upright) photo
       BOX_NORM TYPE_FP32 [4]    the same box normalised to the photo's width and height (0..1)
       SCORE    TYPE_FP32 [1]    probability that the photo shows an animal (the worker uses the box from 0.5)
The photo is decoded and turned upright by whaleid_imaging.py (the copy of services.core.imaging that `whaleid
model-repo build` vendors next to this file), resized to S x S (Pillow bilinear, aspect ratio not kept, as in
training) and run through this version folder's model.onnx with onnxruntime: a trained detector's export
(outputs `box`, `score`), or the label-free CAM localiser's (`whaleid model-repo build --detector cam`: output
`cam`, the class activation map of the photo's top ImageNet class, when the version folder holds the export's
detector.json with `localiser: cam`), whose box and score are whaleid_localisation.cam_box (the vendored
services.core.localisation, the offline crop's own arithmetic, with the export's fraction and margin). Dynamic
batching hands several requests to one execute(), run as one batch. A request whose image does not decode
fails alone, with the reason.
Parameters: image_size, max_pixels, intra_op_threads (0 = onnxruntime's default).
Imports only numpy, Pillow (through whaleid_imaging), onnxruntime and Triton's utilities.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from whaleid_imaging import TRANSFER_FORMATS, decode_image, resize_for_model
from whaleid_localisation import cam_box


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.size = int(parameters["image_size"]["string_value"])
        self.max_pixels = int(parameters["max_pixels"]["string_value"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_threads", {}).get("string_value", "0"))
        # idle threads sleep rather than spin: the host's cores are shared with other instances and the chain
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.session = ort.InferenceSession(os.path.join(folder, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.cam = None  # (fraction, margin) when the model is the CAM localiser
        manifest = os.path.join(folder, "detector.json")
        if os.path.isfile(manifest):
            with open(manifest, encoding="utf-8") as fh:
                record = json.load(fh)
            if record.get("localiser") == "cam":
                self.cam = (float(record["fraction"]), float(record["margin"]))

    def _run(self, pixels: np.ndarray):
        """(normalised boxes (N, 4), scores (N,)) of a model-sized batch."""
        if self.cam is None:
            boxes, scores = self.session.run(["box", "score"], {"image": pixels})
            return boxes, scores.reshape(-1)
        maps = self.session.run(["cam"], {"image": pixels})[0]
        found = [cam_box(m, *self.cam) for m in maps]
        return np.stack([b for b, _ in found]), np.asarray([s for _, s in found], dtype=np.float32)

    def _pixels(self, encoded: np.ndarray):
        """(N, S, S, 3) model input and the (width, height) of each decoded photo."""
        rows, sizes = [], []
        for index, item in enumerate(encoded.reshape(-1)):
            if not isinstance(item, (bytes, bytearray)):
                raise ValueError(f"IMAGE #{index}: expected encoded image bytes, got {type(item).__name__}")
            try:
                image = decode_image(bytes(item), self.max_pixels, formats=TRANSFER_FORMATS)
            except Exception as exc:  # noqa: BLE001 - reported to the caller with the item's index
                raise ValueError(f"IMAGE #{index}: {exc}") from None
            sizes.append((image.shape[1], image.shape[0]))
            rows.append(resize_for_model(image, self.size))
        return np.stack(rows).astype(np.float32), np.asarray(sizes, dtype=np.float32)

    def execute(self, requests):
        prepared, responses = [], [None] * len(requests)
        for r, request in enumerate(requests):
            try:
                prepared.append((r, *self._pixels(pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy())))
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the others
                responses[r] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"detector: {exc}"))
        if prepared:
            try:
                boxes, scores = self._run(np.concatenate([p[1] for p in prepared], axis=0))
            except Exception as exc:  # noqa: BLE001 - reported to every caller of the batch
                error = pb_utils.TritonError(f"detector: onnxruntime failed: {exc}")
                for r, _, _ in prepared:
                    responses[r] = pb_utils.InferenceResponse(error=error)
                return responses
            start = 0
            for r, pixels, sizes in prepared:
                end = start + len(pixels)
                norm = np.clip(boxes[start:end].astype(np.float32), 0.0, 1.0)
                pixel_box = norm * np.concatenate([sizes, sizes], axis=1)
                responses[r] = pb_utils.InferenceResponse([
                    pb_utils.Tensor("BOX", pixel_box.astype(np.float32)),
                    pb_utils.Tensor("BOX_NORM", norm),
                    pb_utils.Tensor("SCORE", scores[start:end].reshape(-1, 1).astype(np.float32))])
                start = end
        return responses
