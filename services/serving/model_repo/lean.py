"""The lean CPU layout of the repository (`whaleid model-repo build --lean`).

The default CPU layout runs three python-backend hops per request (preprocess -> embedder_* -> blend), each
with its own shared-memory IPC to a stub process and its own dynamic batcher. The lean layout has one:

    OUT/pipeline/   python backend: decode + resize once (the vendored services.core.imaging, so pixels are the
                    eval path's), the crops as uint8, then ONE onnxruntime run of 1/model.onnx
    OUT/pipeline/1/model.onnx   one graph for the whole ensemble: per input size a uint8 input
                    `pixels_<size>` [V*N, S, S, 3] (V = 2 views with flip TTA: the crops, then their mirror
                    images), cast to float inside the graph (each export's own normalisation follows), every
                    export's graph (names prefixed), the flip-TTA combination (per view L2-normalised, summed,
                    re-normalised), the score-level blend (vectors.blend: each sqrt(w)-scaled, concatenated)
                    -> EMBEDDING [N, D]; with species heads the weighted average of the members' probabilities -> SPECIES [N, S] (blend_probabilities)
    OUT/ensemble/   platform "ensemble" with that single step: the same contract (IMAGE -> EMBEDDING
                    [+ SPECIES]) and parameters as the default layout

The GPU target keeps its layout (native onnxruntime_onnx embedders). The arithmetic is that of
services.core.identification.vectors written as ONNX operators; tests check it against the offline path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

PIPELINE = "pipeline"
FUSED_FILE = "model.onnx"


def pixels_input(size: int) -> str:
    return f"pixels_{size}"


def fused_graph(members: Sequence[tuple[Path, str, int, Sequence[str]]], weights: Sequence[float], flip_tta: bool,
                species: Sequence[str], embedding_size: int):
    """One ONNX model for the ensemble. `members`: (onnx path, model id, image size, species names) in blend
    order; `weights` sum to 1 (the tuning's)."""
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    views = 2 if flip_tta else 1
    nodes, initializers, value_infos, opsets = [], [], [], {}
    sizes = sorted({size for _, _, size, _ in members})
    inputs = [helper.make_tensor_value_info(pixels_input(s), TensorProto.UINT8, ["views_batch", s, s, 3])
              for s in sizes]
    for size in sizes:
        nodes.append(helper.make_node("Cast", [pixels_input(size)], [f"float_pixels_{size}"], to=TensorProto.FLOAT,
                                      name=f"cast_pixels_{size}"))

    def const(name: str, values, dtype=np.float32):
        initializers.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    axis0 = const("axis0", [0], np.int64)
    weighted, species_parts = [], []
    total_weight = float(sum(weights))
    for index, ((path, _model_id, size, names), weight) in enumerate(zip(members, weights, strict=True)):
        model = onnx.load(str(path))
        for opset in model.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
        prefix = f"m{index}_"
        model = compose.add_prefix(model, prefix)
        graph = model.graph
        image = graph.input[0].name  # the export's `image`, prefixed
        nodes.append(helper.make_node("Identity", [f"float_pixels_{size}"], [image], name=f"{prefix}feed"))
        nodes.extend(graph.node)
        initializers.extend(graph.initializer)
        value_infos.extend(graph.value_info)
        outputs = {o.name[len(prefix):]: o.name for o in graph.output}
        emb = outputs["embedding"]
        size_of_member = int(graph.output[[o.name for o in graph.output].index(emb)].type.tensor_type.shape.dim[-1]
                             .dim_value) or embedding_size
        view_shape = const(f"{prefix}view_shape", [views, -1, size_of_member], np.int64)
        nodes += [
            helper.make_node("Reshape", [emb, view_shape], [f"{prefix}views"]),
            helper.make_node("LpNormalization", [f"{prefix}views"], [f"{prefix}views_n"], axis=-1, p=2),
            helper.make_node("ReduceSum", [f"{prefix}views_n", axis0], [f"{prefix}sum"], keepdims=0),
            helper.make_node("LpNormalization", [f"{prefix}sum"], [f"{prefix}combined"], axis=-1, p=2),
            helper.make_node("Mul", [f"{prefix}combined",  # vectors.blend: sqrt(w / sum w), concatenated
                                     const(f"{prefix}weight", np.float32(np.sqrt(weight / total_weight)))],
                             [f"{prefix}weighted"]),
        ]
        weighted.append(f"{prefix}weighted")
        if names:
            column = {str(n): i for i, n in enumerate(species)}
            mapping = np.zeros((len(names), len(species)), dtype=np.float32)
            for k, name in enumerate(names):
                mapping[k, column[str(name)]] = weight / total_weight / views
            shape = const(f"{prefix}species_shape", [views, -1, len(names)], np.int64)
            nodes += [
                helper.make_node("Reshape", [outputs["species"], shape], [f"{prefix}species_views"]),
                helper.make_node("ReduceSum", [f"{prefix}species_views", axis0], [f"{prefix}species_sum"],
                                 keepdims=0),
                helper.make_node("MatMul", [f"{prefix}species_sum", const(f"{prefix}species_map", mapping)],
                                 [f"{prefix}species_part"]),
            ]
            species_parts.append(f"{prefix}species_part")
    nodes.append(helper.make_node("Concat", weighted, ["blended"], axis=-1) if len(weighted) > 1
                 else helper.make_node("Identity", weighted, ["blended"]))
    nodes.append(helper.make_node("LpNormalization", ["blended"], ["EMBEDDING"], axis=-1, p=2))
    outputs = [helper.make_tensor_value_info("EMBEDDING", TensorProto.FLOAT, ["batch", embedding_size])]
    if species:
        nodes.append(helper.make_node("Sum", species_parts, ["SPECIES"]) if len(species_parts) > 1
                     else helper.make_node("Identity", species_parts, ["SPECIES"]))
        outputs.append(helper.make_tensor_value_info("SPECIES", TensorProto.FLOAT, ["batch", len(species)]))
    graph = helper.make_graph(nodes, "whaleid_ensemble", inputs, outputs, initializers, value_info=value_infos)
    opsets[""] = max(opsets.get("", 0), 17)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def lean_pixels(decoded: Sequence[np.ndarray], sizes: Sequence[int], flip_tta: bool, resize) -> dict[str, np.ndarray]:
    """{pixels_<size>: uint8 (V*N, S, S, 3)}: each decoded crop resized (`resize`: services.core.imaging's
    resize_for_model), then with flip TTA each crop mirrored before the resize; what `pipeline` feeds its graph."""
    feeds = {}
    for size in sizes:
        rows = [resize(image, size) for image in decoded]
        if flip_tta:
            rows += [resize(np.ascontiguousarray(image[:, ::-1]), size) for image in decoded]
        feeds[pixels_input(size)] = np.stack(rows).astype(np.uint8)
    return feeds
