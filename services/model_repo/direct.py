"""The repository's ensemble computed in-process (no Triton): the same decode/resize (services.imaging), the
same model.onnx files run by onnxruntime, the same blend (services.identification.vectors.blend).

Used as the baseline of `whaleid bench triton` and to check that Triton serves what the files compute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from services.identification.vectors import blend
from services.imaging import decode_image, resize_for_model
from services.model_repo.exports import ONNX_FILE
from services.model_repo.onnx_io import INPUT_NAME, OUTPUT_NAME
from services.model_repo.validation import validate_repository


class DirectEnsemble:
    def __init__(self, repository: Path, intra_op_threads: int = 0):
        import onnxruntime as ort

        record = validate_repository(Path(repository))
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        self.embedders = record["embedders"]
        self.weights = {e["model_id"]: float(e["weight"]) for e in self.embedders}
        self.max_pixels = int(record["options"]["max_pixels"])
        self.sizes = sorted({int(e["image_size"]) for e in self.embedders})
        self.sessions = {
            e["model_id"]: ort.InferenceSession(str(Path(repository) / e["name"] / "1" / ONNX_FILE), options,
                                                providers=["CPUExecutionProvider"])
            for e in self.embedders
        }

    def preprocess(self, images: Sequence[bytes]) -> dict[int, np.ndarray]:
        decoded = [decode_image(bytes(b), self.max_pixels) for b in images]
        return {size: np.stack([resize_for_model(image, size) for image in decoded]) for size in self.sizes}

    def embed(self, images: Sequence[bytes]) -> np.ndarray:
        pixels = self.preprocess(images)
        parts = {e["model_id"]: self.sessions[e["model_id"]].run([OUTPUT_NAME], {INPUT_NAME: pixels[e["image_size"]]})[0]
                 for e in self.embedders}
        return blend(parts, self.weights)
