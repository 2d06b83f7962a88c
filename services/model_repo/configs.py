"""Triton `config.pbtxt` templates of the repository's models, filled from data (BuildOptions + exports).

One artifact, two configs: an embedder's model.onnx is served by a python-backend model running onnxruntime
(`cpu` target: Triton's bundled build has no onnxruntime backend) or by Triton's native `onnxruntime_onnx`
platform (`gpu` target, optionally with the TensorRT execution accelerator).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

TARGETS = ("cpu", "gpu")


@dataclass(frozen=True)
class BuildOptions:
    target: str = "cpu"
    max_batch_size: int = 32
    max_queue_delay_us: int = 2000  # dynamic batching: how long a member waits to fill a batch
    preprocess_instances: int = 2
    embedder_instances: int = 1
    blend_instances: int = 1
    intra_op_threads: int = 0  # onnxruntime threads per python-backend embedder instance (0 = default)
    max_pixels: int = 40_000_000
    tensorrt: bool = False  # gpu target: TensorRT accelerator (FP16) on the onnxruntime backend


def _dynamic_batching(options: BuildOptions) -> str:
    return f"dynamic_batching {{ max_queue_delay_microseconds: {options.max_queue_delay_us} }}"


def _parameters(values: dict[str, str]) -> str:
    return "\n".join(f'parameters {{ key: "{k}" value {{ string_value: {json.dumps(str(v))} }} }}'
                     for k, v in values.items())


def preprocess_config(name: str, image_size: int, options: BuildOptions) -> str:
    return f"""name: "{name}"
backend: "python"
max_batch_size: {options.max_batch_size}
input [ {{ name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "PIXELS" data_type: TYPE_FP32 dims: [ {image_size}, {image_size}, 3 ] }} ]
instance_group [ {{ count: {options.preprocess_instances} kind: KIND_CPU }} ]
{_dynamic_batching(options)}
{_parameters({"image_size": image_size, "max_pixels": options.max_pixels})}
"""


def _embedder_io(image_size: int, embedding_size: int) -> str:
    return (f'input [ {{ name: "image" data_type: TYPE_FP32 dims: [ {image_size}, {image_size}, 3 ] }} ]\n'
            f'output [ {{ name: "embedding" data_type: TYPE_FP32 dims: [ {embedding_size} ] }} ]')


def embedder_config(name: str, image_size: int, embedding_size: int, options: BuildOptions, model_id: str) -> str:
    head = f'name: "{name}"\nmax_batch_size: {options.max_batch_size}\n{_embedder_io(image_size, embedding_size)}\n'
    if options.target == "cpu":
        return head + f"""backend: "python"
instance_group [ {{ count: {options.embedder_instances} kind: KIND_CPU }} ]
{_dynamic_batching(options)}
{_parameters({"model_id": model_id, "intra_op_threads": options.intra_op_threads})}
"""
    accelerator = ""
    if options.tensorrt:
        accelerator = """optimization { execution_accelerators { gpu_execution_accelerator : [ {
  name : "tensorrt"
  parameters { key: "precision_mode" value: "FP16" }
  parameters { key: "max_workspace_size_bytes" value: "1073741824" } } ] } }
"""
    return head + f"""platform: "onnxruntime_onnx"
default_model_filename: "model.onnx"
instance_group [ {{ count: {options.embedder_instances} kind: KIND_GPU }} ]
{_dynamic_batching(options)}
{accelerator}{_parameters({"model_id": model_id})}
"""


def blend_config(model_ids: Sequence[str], weights: Sequence[float], embedding_size: int, options: BuildOptions) -> str:
    inputs = ",\n  ".join(f'{{ name: "EMB_{i}" data_type: TYPE_FP32 dims: [ {embedding_size} ] }}'
                          for i in range(len(model_ids)))
    return f"""name: "blend"
backend: "python"
max_batch_size: {options.max_batch_size}
input [
  {inputs}
]
output [ {{ name: "EMBEDDING" data_type: TYPE_FP32 dims: [ {embedding_size} ] }} ]
instance_group [ {{ count: {options.blend_instances} kind: KIND_CPU }} ]
{_parameters({"model_ids": json.dumps(list(model_ids)), "weights": json.dumps([float(w) for w in weights])})}
"""


def ensemble_config(
    preprocess_by_size: dict[int, str],
    embedders: Sequence[tuple[str, int]],  # (model name, image size), in blend input order
    embedding_size: int,
    options: BuildOptions,
    parameters: dict[str, str],
) -> str:
    steps = []
    for size, name in sorted(preprocess_by_size.items()):
        steps.append(f'{{ model_name: "{name}" model_version: -1\n'
                     f'    input_map {{ key: "IMAGE" value: "IMAGE" }}\n'
                     f'    output_map {{ key: "PIXELS" value: "pixels_{size}" }} }}')
    for index, (name, size) in enumerate(embedders):
        steps.append(f'{{ model_name: "{name}" model_version: -1\n'
                     f'    input_map {{ key: "image" value: "pixels_{size}" }}\n'
                     f'    output_map {{ key: "embedding" value: "embedding_{index}" }} }}')
    blend_inputs = "\n    ".join(f'input_map {{ key: "EMB_{i}" value: "embedding_{i}" }}' for i in range(len(embedders)))
    steps.append(f'{{ model_name: "blend" model_version: -1\n    {blend_inputs}\n'
                 f'    output_map {{ key: "EMBEDDING" value: "EMBEDDING" }} }}')
    joined = ",\n  ".join(steps)
    return f"""name: "ensemble"
platform: "ensemble"
max_batch_size: {options.max_batch_size}
input [ {{ name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "EMBEDDING" data_type: TYPE_FP32 dims: [ {embedding_size} ] }} ]
ensemble_scheduling {{ step [
  {joined}
] }}
{_parameters(parameters)}
"""
