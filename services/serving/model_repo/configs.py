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
    lean: bool = False  # cpu target: one python hop + one fused ONNX graph (services.serving.model_repo.lean)
    lean_queue_delay_us: int = 0  # lean pipeline: batch what queued while busy, never wait for more
    lean_instances: int = 2  # lean pipeline instances: one decodes while the other runs onnxruntime
    lean_intra_op_threads: int = 1  # onnxruntime threads per lean instance (2 instances x 1 on 2 cores)


def _dynamic_batching(options: BuildOptions) -> str:
    return f"dynamic_batching {{ max_queue_delay_microseconds: {options.max_queue_delay_us} }}"


def _parameters(values: dict[str, str]) -> str:
    return "\n".join(f'parameters {{ key: "{k}" value {{ string_value: {json.dumps(str(v))} }} }}'
                     for k, v in values.items())


def preprocess_config(name: str, image_size: int, options: BuildOptions, flip_tta: bool = False,
                      pillow_version: str = "") -> str:
    flipped = (f',\n         {{ name: "PIXELS_FLIP" data_type: TYPE_FP32 dims: [ {image_size}, {image_size}, 3 ] }}'
               if flip_tta else "")
    return f"""name: "{name}"
backend: "python"
max_batch_size: {options.max_batch_size}
input [ {{ name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "PIXELS" data_type: TYPE_FP32 dims: [ {image_size}, {image_size}, 3 ] }}{flipped} ]
instance_group [ {{ count: {options.preprocess_instances} kind: KIND_CPU }} ]
{_dynamic_batching(options)}
{_parameters({"image_size": image_size, "max_pixels": options.max_pixels, "flip_tta": _flag(flip_tta),
              "pillow_version": pillow_version})}
"""


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _embedder_io(image_size: int, embedding_size: int, species_count: int = 0) -> str:
    species = (f',\n         {{ name: "species" data_type: TYPE_FP32 dims: [ {species_count} ] }}'
               if species_count else "")
    return (f'input [ {{ name: "image" data_type: TYPE_FP32 dims: [ {image_size}, {image_size}, 3 ] }} ]\n'
            f'output [ {{ name: "embedding" data_type: TYPE_FP32 dims: [ {embedding_size} ] }}{species} ]')


def embedder_config(name: str, image_size: int, embedding_size: int, options: BuildOptions, model_id: str,
                    species_count: int = 0) -> str:
    head = (f'name: "{name}"\nmax_batch_size: {options.max_batch_size}\n'
            f'{_embedder_io(image_size, embedding_size, species_count)}\n')
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


@dataclass(frozen=True)
class Member:
    """One embedder of the ensemble, in blend input order."""

    name: str  # Triton model name
    model_id: str
    image_size: int
    species: tuple[str, ...] = ()  # names of its species output; () = none


def views(flip_tta: bool) -> tuple[str, ...]:
    """Tensor-name suffixes of the views embedded per crop: the crop, and with flip TTA its mirror image."""
    return ("", "_FLIP") if flip_tta else ("",)


def blend_config(members: Sequence[Member], weights: Sequence[float], embedding_size: int, options: BuildOptions,
                 species: Sequence[str] = (), flip_tta: bool = False) -> str:
    inputs = [f'{{ name: "EMB{view}_{i}" data_type: TYPE_FP32 dims: [ {embedding_size} ] }}'
              for i in range(len(members)) for view in views(flip_tta)]
    inputs += [f'{{ name: "SPC{view}_{i}" data_type: TYPE_FP32 dims: [ {len(m.species)} ] }}'
               for i, m in enumerate(members) if m.species for view in views(flip_tta)]
    outputs = [f'{{ name: "EMBEDDING" data_type: TYPE_FP32 dims: [ {embedding_size} ] }}']
    if species:
        outputs.append(f'{{ name: "SPECIES" data_type: TYPE_FP32 dims: [ {len(species)} ] }}')
    joined = ",\n  ".join(inputs)
    parameters = {"model_ids": json.dumps([m.model_id for m in members]), "weights": json.dumps([float(w) for w in weights]),
                  "flip_tta": _flag(flip_tta), "species": json.dumps(list(species)),
                  "member_species": json.dumps([list(m.species) for m in members])}
    return f"""name: "blend"
backend: "python"
max_batch_size: {options.max_batch_size}
input [
  {joined}
]
output [ {", ".join(outputs)} ]
instance_group [ {{ count: {options.blend_instances} kind: KIND_CPU }} ]
{_parameters(parameters)}
"""


def ensemble_config(
    preprocess_by_size: dict[int, str],
    members: Sequence[Member],
    embedding_size: int,
    options: BuildOptions,
    parameters: dict[str, str],
    species: Sequence[str] = (),
    flip_tta: bool = False,
) -> str:
    """IMAGE -> preprocess (PIXELS [+ PIXELS_FLIP]) -> each embedder once per view -> blend -> EMBEDDING
    [+ SPECIES]. An embedder serves both views: two steps of one model."""
    steps = []
    for size, name in sorted(preprocess_by_size.items()):
        outputs = "\n    ".join(f'output_map {{ key: "PIXELS{view}" value: "pixels{view.lower()}_{size}" }}'
                                for view in views(flip_tta))
        steps.append(f'{{ model_name: "{name}" model_version: -1\n'
                     f'    input_map {{ key: "IMAGE" value: "IMAGE" }}\n'
                     f'    {outputs} }}')
    blend_inputs = []
    for index, member in enumerate(members):
        for view in views(flip_tta):
            tag = view.lower()
            maps = [f'output_map {{ key: "embedding" value: "embedding{tag}_{index}" }}']
            blend_inputs.append(f'input_map {{ key: "EMB{view}_{index}" value: "embedding{tag}_{index}" }}')
            if member.species:
                maps.append(f'output_map {{ key: "species" value: "species{tag}_{index}" }}')
                blend_inputs.append(f'input_map {{ key: "SPC{view}_{index}" value: "species{tag}_{index}" }}')
            steps.append(f'{{ model_name: "{member.name}" model_version: -1\n'
                         f'    input_map {{ key: "image" value: "pixels{tag}_{member.image_size}" }}\n'
                         f'    {" ".join(maps)} }}')
    blend_outputs = ['output_map { key: "EMBEDDING" value: "EMBEDDING" }']
    if species:
        blend_outputs.append('output_map { key: "SPECIES" value: "SPECIES" }')
    steps.append('{ model_name: "blend" model_version: -1\n    ' + "\n    ".join(blend_inputs) +
                 f'\n    {" ".join(blend_outputs)} }}')
    joined = ",\n  ".join(steps)
    outputs = [f'{{ name: "EMBEDDING" data_type: TYPE_FP32 dims: [ {embedding_size} ] }}']
    if species:
        outputs.append(f'{{ name: "SPECIES" data_type: TYPE_FP32 dims: [ {len(species)} ] }}')
    return f"""name: "ensemble"
platform: "ensemble"
max_batch_size: {options.max_batch_size}
input [ {{ name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {", ".join(outputs)} ]
ensemble_scheduling {{ step [
  {joined}
] }}
{_parameters({**parameters, "species": json.dumps(list(species)), "flip_tta": _flag(flip_tta)})}
"""
