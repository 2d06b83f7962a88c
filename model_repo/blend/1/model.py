"""Triton python backend `blend`: per model the flip-TTA combination of its two views (when built with flip TTA),
then the score-level blend: each embedder's normalised output scaled by sqrt(w_i / sum w), concatenated in
model-id order, so that an inner product of two outputs is the weighted mean of the members' cosines; and the
species probabilities.

Inputs EMB_0 .. EMB_{K-1} TYPE_FP32 [D_i] (one per embedder, of its own size, in the order of parameter `model_ids`; with flip TTA
also EMB_FLIP_i, the embedding of the mirrored crop), SPC_i [+ SPC_FLIP_i] TYPE_FP32 [S_i] for the embedders with
a species output (names: parameter `member_species`). Outputs EMBEDDING TYPE_FP32 [sum of D_i] and, when parameter
`species` names any, SPECIES TYPE_FP32 [S] (the weighted average of the members' probabilities, each view at half
its model's weight). Parameter `weights`: JSON list, one weight per embedder (from the tuning file).
The arithmetic is services.core.identification.vectors (combine_flip, blend, blend_probabilities), the functions the
offline evaluation uses, vendored next to this file as whaleid_vectors.py by `whaleid model-repo build`: this
model imports only numpy and Triton's utilities, the project need not be installed.
"""

import json

import triton_python_backend_utils as pb_utils
from whaleid_vectors import blend, blend_probabilities, combine_flip


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})

        def parameter(key, default):
            return json.loads(parameters[key]["string_value"]) if key in parameters else default

        self.model_ids = parameter("model_ids", [])
        self.weights = dict(zip(self.model_ids, parameter("weights", []), strict=True))
        self.flip_tta = parameter("flip_tta", False) is True
        self.species = parameter("species", [])
        self.member_species = parameter("member_species", [[] for _ in self.model_ids])
        self.views = ("", "_FLIP") if self.flip_tta else ("",)

    def _outputs(self, request):
        def get(name):
            return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

        parts = {}
        for i, model_id in enumerate(self.model_ids):
            parts[model_id] = combine_flip(get(f"EMB_{i}"), get(f"EMB_FLIP_{i}")) if self.flip_tta else get(f"EMB_{i}")
        outputs = [pb_utils.Tensor("EMBEDDING", blend(parts, self.weights))]
        if self.species:
            species = [(get(f"SPC{view}_{i}"), names, self.weights[model_id] / len(self.views))
                       for i, (model_id, names) in enumerate(zip(self.model_ids, self.member_species, strict=True))
                       if names for view in self.views]
            outputs.append(pb_utils.Tensor("SPECIES", blend_probabilities(species, self.species)))
        return outputs

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(self._outputs(request)))
            except Exception as exc:  # noqa: BLE001 - reported to the caller
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"blend: {exc}")))
        return responses
