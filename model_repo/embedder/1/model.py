"""Triton python backend `embedder_<model_id>` (CPU target): runs this version folder's model.onnx with
onnxruntime. The GPU target serves the same model.onnx with Triton's native `onnxruntime_onnx` platform.

Input `image` TYPE_FP32 [S, S, 3], outputs those of the config: `embedding` TYPE_FP32 [D] (L2-normalised, as
exported) and, for exports with a species head, `species` TYPE_FP32 [K] (probabilities).
Dynamic batching hands several requests to one execute(): they run as one onnxruntime batch.
Parameters: intra_op_threads (0 = onnxruntime's default).
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_threads", {}).get("string_value", "0"))
        # idle threads sleep rather than spin: the host's cores are shared with other instances and the chain
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.outputs = [output["name"] for output in config.get("output", [])] or ["embedding"]

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, "image").as_numpy() for r in requests]
        try:
            results = self.session.run(self.outputs, {"image": np.concatenate(batches, axis=0)})
        except Exception as exc:  # noqa: BLE001 - reported to every caller of the batch
            error = pb_utils.TritonError(f"embedder: onnxruntime failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for batch in batches:
            end = start + len(batch)
            tensors = [pb_utils.Tensor(name, result[start:end]) for name, result in zip(self.outputs, results, strict=True)]
            responses.append(pb_utils.InferenceResponse(tensors))
            start = end
        return responses
