"""Triton python backend `pipeline` (lean CPU layout, `whaleid model-repo build --lean`): the whole ensemble in
one hop. Encoded crops -> decode_image + resize_for_model of whaleid_imaging.py (the vendored services.core.imaging:
the eval path) once per input size, as uint8 -> ONE onnxruntime run of this version folder's model.onnx, the
fused graph of every embedder + flip TTA + blend (services.serving.model_repo.lean) -> EMBEDDING [+ SPECIES].

Input  IMAGE TYPE_STRING [1] (JPEG/PNG/WebP, or the worker's binary PPM); outputs EMBEDDING TYPE_FP32 [D] and,
with species heads, SPECIES TYPE_FP32 [S].
Dynamic batching hands several requests to one execute(): their crops run as one onnxruntime batch; a request
whose image does not decode fails alone, with the reason.
Parameters: image_sizes (comma-separated), max_pixels, flip_tta, intra_op_threads, species.
Imports only numpy, Pillow (through whaleid_imaging), onnxruntime and Triton's utilities.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from whaleid_imaging import TRANSFER_FORMATS, decode_image, resize_for_model


class TritonPythonModel:
    def initialize(self, args):
        parameters = {k: v["string_value"] for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
        self.sizes = [int(s) for s in parameters["image_sizes"].split(",")]
        self.max_pixels = int(parameters["max_pixels"])
        self.flip_tta = parameters.get("flip_tta", "false") == "true"
        self.outputs = ["EMBEDDING", "SPECIES"] if parameters.get("species", "false") == "true" else ["EMBEDDING"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_threads", "0"))
        # idle threads sleep rather than spin: the host's cores are shared with other instances and the chain
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def _decode(self, request) -> list:
        encoded = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
        images = []
        for index, item in enumerate(encoded):
            if not isinstance(item, (bytes, bytearray)):
                raise ValueError(f"IMAGE #{index}: expected encoded image bytes, got {type(item).__name__}")
            try:
                images.append(decode_image(bytes(item), self.max_pixels, formats=TRANSFER_FORMATS))
            except Exception as exc:  # noqa: BLE001 - reported to the caller with the item's index
                raise ValueError(f"IMAGE #{index}: {exc}") from None
        return images

    def _feeds(self, decoded: list) -> dict:
        feeds = {}
        for size in self.sizes:
            rows = [resize_for_model(image, size) for image in decoded]
            if self.flip_tta:
                rows += [resize_for_model(np.ascontiguousarray(image[:, ::-1]), size) for image in decoded]
            feeds[f"pixels_{size}"] = np.stack(rows).astype(np.uint8)
        return feeds

    def execute(self, requests):
        responses = [None] * len(requests)
        batch, counts = [], []
        for index, request in enumerate(requests):
            try:
                images = self._decode(request)
                batch += images
                counts.append((index, len(images)))
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the others
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"preprocess: {exc}"))
        if batch:
            try:
                results = self.session.run(self.outputs, self._feeds(batch))
            except Exception as exc:  # noqa: BLE001 - reported to every caller of the batch
                error = pb_utils.TritonError(f"pipeline: onnxruntime failed: {exc}")
                for index, _ in counts:
                    responses[index] = pb_utils.InferenceResponse(error=error)
                return responses
            start = 0
            for index, count in counts:
                tensors = [pb_utils.Tensor(name, result[start:start + count])
                           for name, result in zip(self.outputs, results, strict=True)]
                responses[index] = pb_utils.InferenceResponse(tensors)
                start += count
        return responses
