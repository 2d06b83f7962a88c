"""The Triton `config.pbtxt` of each model the build writes: the template in `model_repo/<model>/config.pbtxt`,
filled from data (BuildOptions + exports) by services.serving.model_repo.templates. What varies in length with
the exports (input lists, ensemble steps, optional outputs) is built here as pbtxt blocks; the rest is the
template's.

One artifact, two configs: an embedder's model.onnx is served by a python-backend model running onnxruntime
(`cpu` target, template `embedder`: Triton's bundled build has no onnxruntime backend) or by Triton's native
`onnxruntime_onnx` platform (`gpu` target, template `embedder_gpu`, optionally with the TensorRT execution
accelerator).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from services.serving.model_repo.templates import render_config

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


TENSORRT = """optimization { execution_accelerators { gpu_execution_accelerator : [ {
  name : "tensorrt"
  parameters { key: "precision_mode" value: "FP16" }
  parameters { key: "max_workspace_size_bytes" value: "1073741824" } } ] } }
"""


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _tensor(name: str, *dims: int) -> str:
    return f'{{ name: "{name}" data_type: TYPE_FP32 dims: [ {", ".join(str(d) for d in dims)} ] }}'


def _outputs(embedding_size: int, species: Sequence[str]) -> str:
    """EMBEDDING [+ SPECIES]: the ensemble's contract, also the blend's and the lean pipeline's outputs."""
    outputs = [_tensor("EMBEDDING", embedding_size)] + ([_tensor("SPECIES", len(species))] if species else [])
    return ", ".join(outputs)


def _optional_output(name: str, *dims: int, present: bool) -> str:
    return f",\n         {_tensor(name, *dims)}" if present else ""


def preprocess_config(name: str, image_size: int, options: BuildOptions, flip_tta: bool = False,
                      pillow_version: str = "") -> str:
    return render_config("preprocess", {
        "name": name, "max_batch_size": options.max_batch_size, "image_size": image_size,
        "preprocess_instances": options.preprocess_instances, "max_queue_delay_us": options.max_queue_delay_us,
        "max_pixels": options.max_pixels, "flip_tta": _flag(flip_tta), "pillow_version": pillow_version,
    }, {"flip_output": _optional_output("PIXELS_FLIP", image_size, image_size, 3, present=flip_tta)})


def embedder_config(name: str, image_size: int, embedding_size: int, options: BuildOptions, model_id: str,
                    species_count: int = 0) -> str:
    values = {"name": name, "max_batch_size": options.max_batch_size, "image_size": image_size,
              "embedding_size": embedding_size, "embedder_instances": options.embedder_instances,
              "max_queue_delay_us": options.max_queue_delay_us, "model_id": model_id}
    blocks = {"species_output": _optional_output("species", species_count, present=bool(species_count))}
    if options.target == "cpu":
        return render_config("embedder", {**values, "intra_op_threads": options.intra_op_threads}, blocks)
    return render_config("embedder_gpu", values, {**blocks, "accelerator": TENSORRT if options.tensorrt else ""})


@dataclass(frozen=True)
class Member:
    """One embedder of the ensemble, in blend input order."""

    name: str  # Triton model name
    model_id: str
    image_size: int
    species: tuple[str, ...] = ()  # names of its species output; () = none
    embedding_size: int = 0  # its embedding's size (0: the blend's size); members of a blend may differ


def views(flip_tta: bool) -> tuple[str, ...]:
    """Tensor-name suffixes of the views embedded per crop: the crop, and with flip TTA its mirror image."""
    return ("", "_FLIP") if flip_tta else ("",)


def blend_config(members: Sequence[Member], weights: Sequence[float], embedding_size: int, options: BuildOptions,
                 species: Sequence[str] = (), flip_tta: bool = False) -> str:
    inputs = [_tensor(f"EMB{view}_{i}", m.embedding_size or embedding_size)
              for i, m in enumerate(members) for view in views(flip_tta)]
    inputs += [_tensor(f"SPC{view}_{i}", len(m.species))
               for i, m in enumerate(members) if m.species for view in views(flip_tta)]
    return render_config("blend", {
        "max_batch_size": options.max_batch_size, "blend_instances": options.blend_instances,
        "model_ids": json.dumps([m.model_id for m in members]), "weights": json.dumps([float(w) for w in weights]),
        "flip_tta": _flag(flip_tta), "species": json.dumps(list(species)),
        "member_species": json.dumps([list(m.species) for m in members]),
    }, {"inputs": ",\n  ".join(inputs), "outputs": _outputs(embedding_size, species)})


def ensemble_steps(preprocess_by_size: dict[int, str], members: Sequence[Member], species: Sequence[str],
                   flip_tta: bool) -> str:
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
    steps.append('{ model_name: "blend" model_version: -1\n    ' + "\n    ".join(blend_inputs) +
                 f'\n    {output_maps(species)} }}')
    return ",\n  ".join(steps)


def output_maps(species: Sequence[str]) -> str:
    """The ensemble's last step maps its EMBEDDING [+ SPECIES] to the ensemble's outputs of the same names."""
    return " ".join(f'output_map {{ key: "{name}" value: "{name}" }}'
                    for name in ("EMBEDDING", "SPECIES")[:2 if species else 1])


def ensemble_config(
    preprocess_by_size: dict[int, str],
    members: Sequence[Member],
    embedding_size: int,
    options: BuildOptions,
    parameters: dict[str, str],
    species: Sequence[str] = (),
    flip_tta: bool = False,
) -> str:
    """The standard layout's ensemble; `parameters`: build_id, model_ids, weights, image_formats."""
    return render_config("ensemble", {
        "max_batch_size": options.max_batch_size, **parameters, "species": json.dumps(list(species)),
        "flip_tta": _flag(flip_tta),
    }, {"outputs": _outputs(embedding_size, species),
        "steps": ensemble_steps(preprocess_by_size, members, species, flip_tta)})


def pipeline_config(sizes: Sequence[int], embedding_size: int, species: Sequence[str], options: BuildOptions,
                    flip_tta: bool, pillow_version: str) -> str:
    """The lean layout's single python step (services.serving.model_repo.lean)."""
    return render_config("pipeline", {
        "max_batch_size": options.max_batch_size, "lean_instances": options.lean_instances,
        "lean_queue_delay_us": options.lean_queue_delay_us, "image_sizes": ",".join(str(s) for s in sizes),
        "max_pixels": options.max_pixels, "flip_tta": _flag(flip_tta),
        "lean_intra_op_threads": options.lean_intra_op_threads, "species": _flag(bool(species)),
        "pillow_version": pillow_version,
    }, {"outputs": _outputs(embedding_size, species)})


def lean_ensemble_config(embedding_size: int, species: Sequence[str], options: BuildOptions,
                         parameters: dict[str, str]) -> str:
    """The lean layout's ensemble: the same contract; `parameters`: build_id, model_ids, weights, flip_tta,
    image_formats."""
    return render_config("ensemble_lean", {
        "max_batch_size": options.max_batch_size, **parameters, "species": json.dumps(list(species)),
    }, {"outputs": _outputs(embedding_size, species), "output_maps": output_maps(species)})


def detector_config(image_size: int, options: BuildOptions, image_formats: str) -> str:
    """The optional crop detector (services.serving.model_repo.detector)."""
    return render_config("detector", {
        "max_batch_size": options.max_batch_size, "max_queue_delay_us": options.max_queue_delay_us,
        "image_size": image_size, "max_pixels": options.max_pixels, "intra_op_threads": options.intra_op_threads,
        "image_formats": image_formats,
    })
