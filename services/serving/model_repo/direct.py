"""The repository's ensemble computed in-process (no Triton): the same decode/resize (services.core.imaging), the
same model.onnx files run by onnxruntime, the same flip-TTA combination and blends
(services.core.identification.vectors: combine_flip, blend, blend_probabilities).

Used as the baseline of `whaleid bench triton` and to check that Triton serves what the files compute.
`intra_op_threads` / `allow_spinning` set its onnxruntime sessions (default: onnxruntime's thread count, idle
threads sleeping, as the served models); the bench measures several settings and keeps the fastest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from services.core.identification.vectors import blend, blend_probabilities, combine_flip
from services.core.imaging import TRANSFER_FORMATS, decode_image, resize_for_model
from services.core.model_exports import ONNX_FILE
from services.core.onnx_signature import INPUT_NAME, OUTPUT_NAME, SPECIES_OUTPUT
from services.serving.model_repo.validation import validate_repository


class DirectEnsemble:
    def __init__(self, repository: Path, intra_op_threads: int = 0, allow_spinning: bool = False):
        import onnxruntime as ort

        record = validate_repository(Path(repository))
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        # idle threads sleep by default, as the served models'
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        self.embedders = record["embedders"]
        self.weights = {e["model_id"]: float(e["weight"]) for e in self.embedders}
        self.max_pixels = int(record["options"]["max_pixels"])
        self.flip_tta = bool(record.get("flip_tta", False))
        self.species: list[str] = list(record.get("species") or [])
        self.sizes = sorted({int(e["image_size"]) for e in self.embedders})
        self.lean = record.get("lean")
        if self.lean:  # the lean layout: its one fused graph (services.serving.model_repo.lean), as `pipeline` runs it
            self.fused = ort.InferenceSession(str(Path(repository) / self.lean["onnx"]), options,
                                              providers=["CPUExecutionProvider"])
            self.sessions = {}
            return
        self.sessions = {
            e["model_id"]: ort.InferenceSession(str(Path(repository) / e["name"] / "1" / ONNX_FILE), options,
                                                providers=["CPUExecutionProvider"])
            for e in self.embedders
        }

    def preprocess(self, images: Sequence[bytes]) -> dict[tuple[int, bool], np.ndarray]:
        """{(size, mirrored): pixels} of each input size, and with flip TTA of the mirrored crops too."""
        decoded = [decode_image(bytes(b), self.max_pixels, formats=TRANSFER_FORMATS) for b in images]
        views = [False, True] if self.flip_tta else [False]
        return {(size, mirrored): np.stack([resize_for_model(np.ascontiguousarray(i[:, ::-1]) if mirrored else i, size)
                                            for i in decoded])
                for size in self.sizes for mirrored in views}

    def embed_with_species(self, images: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray | None]:
        """(EMBEDDING (N, D), SPECIES (N, S) or None without species outputs), as the ensemble computes them."""
        if self.lean:
            from services.serving.model_repo.lean import lean_pixels

            decoded = [decode_image(bytes(b), self.max_pixels, formats=TRANSFER_FORMATS) for b in images]
            names = ["EMBEDDING", "SPECIES"] if self.species else ["EMBEDDING"]
            results = self.fused.run(names, lean_pixels(decoded, self.sizes, self.flip_tta, resize_for_model))
            return results[0], (results[1] if self.species else None)
        pixels = self.preprocess(images)
        views = [False, True] if self.flip_tta else [False]
        embeddings, species = {}, []
        for entry in self.embedders:
            names = list(entry.get("species") or [])
            outputs = [OUTPUT_NAME, SPECIES_OUTPUT] if names else [OUTPUT_NAME]
            runs = [self.sessions[entry["model_id"]].run(outputs, {INPUT_NAME: pixels[(entry["image_size"], m)]})
                    for m in views]
            model_id = entry["model_id"]
            embeddings[model_id] = combine_flip(runs[0][0], runs[1][0]) if self.flip_tta else runs[0][0]
            species += [(run[1], names, self.weights[model_id] / len(views)) for run in runs if names]
        blended = blend(embeddings, self.weights)
        return blended, (blend_probabilities(species, self.species) if self.species else None)

    def embed(self, images: Sequence[bytes]) -> np.ndarray:
        return self.embed_with_species(images)[0]
