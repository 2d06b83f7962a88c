"""EmbeddingClient's inference target (services.serving.triton_client.client.passthrough_step): a lean
repository's ensemble, one step that passes its tensors through, is sent to that step; any other model to
itself."""

from __future__ import annotations

import copy

from services.serving.triton_client.client import passthrough_step

LEAN = {"name": "ensemble", "platform": "ensemble", "max_batch_size": 32,
        "input": [{"name": "IMAGE", "data_type": "TYPE_STRING", "dims": ["1"]}],
        "output": [{"name": "EMBEDDING", "data_type": "TYPE_FP32", "dims": ["512"]}],
        "ensemble_scheduling": {"step": [{"model_name": "pipeline", "model_version": "-1",
                                          "input_map": {"IMAGE": "IMAGE"}, "output_map": {"EMBEDDING": "EMBEDDING"}}]}}


def test_a_lean_ensemble_is_sent_to_its_one_step_and_any_other_model_to_itself():
    assert passthrough_step(LEAN) == "pipeline"
    with_species = copy.deepcopy(LEAN)
    with_species["output"].append({"name": "SPECIES", "data_type": "TYPE_FP32", "dims": ["3"]})
    assert passthrough_step(with_species) is None  # the step's SPECIES is not mapped: not a pass-through
    with_species["ensemble_scheduling"]["step"][0]["output_map"]["SPECIES"] = "SPECIES"
    assert passthrough_step(with_species) == "pipeline"
    standard = copy.deepcopy(LEAN)
    standard["ensemble_scheduling"]["step"] = [
        {"model_name": "preprocess", "model_version": "-1", "input_map": {"IMAGE": "IMAGE"},
         "output_map": {"PIXELS": "pixels"}},
        {"model_name": "embedder_a", "model_version": "-1", "input_map": {"PIXELS": "pixels"},
         "output_map": {"EMBEDDING": "EMBEDDING"}}]
    assert passthrough_step(standard) is None
    renamed = copy.deepcopy(LEAN)
    renamed["ensemble_scheduling"]["step"][0]["output_map"] = {"OUT": "EMBEDDING"}
    assert passthrough_step(renamed) is None
    pinned = copy.deepcopy(LEAN)
    pinned["ensemble_scheduling"]["step"][0]["model_version"] = "2"
    assert passthrough_step(pinned) is None
    assert passthrough_step({"name": "toy", "backend": "python", "input": LEAN["input"]}) is None
