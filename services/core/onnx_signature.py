"""Reading an ONNX file's signature without running it (names, element types and shapes of inputs/outputs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

INPUT_NAME = "image"
OUTPUT_NAME = "embedding"
SPECIES_OUTPUT = "species"  # optional second output: species probabilities (runs with a species head)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy-style name, e.g. float32
    shape: tuple  # ints; -1 for a dynamic dimension


def onnx_signature(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of the graph; initializers listed as inputs (old exporters) are skipped."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return TensorSpec(value.name, str(helper.tensor_dtype_to_np_dtype(tensor.elem_type)), dims)

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def embedder_signature_problems(path: Path, image_size: int, embedding_size: int, species_count: int = 0) -> list[str]:
    """What is wrong with an embedder's ONNX signature (empty: it takes `image` float32 [?, S, S, 3] NHWC
    and returns `embedding` float32 [?, D], plus `species` float32 [?, K] exactly when `species_count` K > 0)."""
    inputs, outputs = onnx_signature(path)
    problems = []
    want_in = (-1, image_size, image_size, 3)
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].dtype != "float32":
        problems.append(f"expected one float32 input {INPUT_NAME!r}, found {[(i.name, i.dtype) for i in inputs]}")
    elif len(inputs[0].shape) != 4 or inputs[0].shape[1:] != want_in[1:]:
        problems.append(f"input {INPUT_NAME!r} has shape {list(inputs[0].shape)}, expected NHWC 3-channel "
                        f"{list(want_in)}")
    wanted = {OUTPUT_NAME: embedding_size, **({SPECIES_OUTPUT: species_count} if species_count else {})}
    found = {o.name: o for o in outputs}
    if set(found) != set(wanted) or any(o.dtype != "float32" for o in outputs):
        problems.append(f"expected float32 output(s) {', '.join(map(repr, wanted))}, found "
                        f"{[(o.name, o.dtype) for o in outputs]}")
        return problems
    for name, size in wanted.items():
        if len(found[name].shape) != 2 or found[name].shape[1] != size:
            problems.append(f"output {name!r} has shape {list(found[name].shape)}, expected [-1, {size}]")
    return problems
