"""A `tf.function` -> an ONNX file whose input and outputs carry fixed names (tf2onnx appends suffixes such as
`:0`): the detector's and the CAM localiser's exports."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def save_onnx(function, spec, onnx_path: Path, input_name: str, output_names: Sequence[str], opset: int) -> None:
    """Convert `function` (its input signature `spec`) on the CPU, rename its first input to `input_name` and its
    outputs, in order, to `output_names`, check the graph and write it to `onnx_path`."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    with tf.device("/cpu:0"):
        proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=opset)
    graph = proto.graph
    renames = {graph.input[0].name: input_name,
               **{out.name: name for out, name in zip(graph.output, output_names, strict=True)}}
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in (*graph.input, *graph.output):
        value.name = renames.get(value.name, value.name)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(onnx_path))
