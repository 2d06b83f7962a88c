"""Triton python backend `blend`: the weighted sum of the embedders' normalised outputs, re-normalised.

Inputs EMB_0 .. EMB_{K-1} TYPE_FP32 [D] (one per embedder, in the order of parameter `model_ids`), output
EMBEDDING TYPE_FP32 [D]. Parameter `weights`: JSON list, one weight per input (from the tuning file).
The arithmetic is services.identification.vectors.blend, the function the offline evaluation uses.
"""

import json

import triton_python_backend_utils as pb_utils

from services.identification.vectors import blend


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.model_ids = json.loads(parameters["model_ids"]["string_value"])
        self.weights = dict(zip(self.model_ids, json.loads(parameters["weights"]["string_value"]), strict=True))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                parts = {model_id: pb_utils.get_input_tensor_by_name(request, f"EMB_{i}").as_numpy()
                         for i, model_id in enumerate(self.model_ids)}
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("EMBEDDING", blend(parts, self.weights))]))
            except Exception as exc:  # noqa: BLE001 - reported to the caller
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"blend: {exc}")))
        return responses
