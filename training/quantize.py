"""Reduced-precision embedders (`whaleid export --precision fp32|bf16|int8`) and their identification parity.

- `int8`: onnxruntime static quantisation of the fp32 ONNX export (QDQ format, per-channel int8 weights, uint8
  activations, MinMax calibration; the input's rescaling and the head stay fp32: fp32_ends) calibrated on training crops (the eval path: services.core.imaging crop + resize of
  the data's train images at their eval box). On x86 with VNNI/AMX onnxruntime runs the QDQ Conv/MatMul pairs as
  integer kernels; on AVX2 alone its U8S8 kernel's int16 pair sums saturate, so the dense Convs where that costs
  accuracy on this machine get uint8 weights (U8U8 kernel, the same numbers: u8_weights="auto", saturating_convs).
- `bf16`: onnxruntime's CPU execution provider has no bfloat16 compute kernels (ONNX Conv does not even accept
  bfloat16 before opset 22; MatMul(bf16) is NOT_IMPLEMENTED on CPU, measured with onnxruntime 1.32). What
  `bf16` gives here is honest about that: the weights are rounded to bfloat16 and stored as bfloat16 (half the
  file), each followed by a Cast to float32 that onnxruntime folds at load, so the computation is fp32
  (`compute: fp32` in the manifest) and the speed is fp32's; the accuracy is that of bf16 weights. On a GPU (or a
  build with bf16 kernels) a real bf16 graph is a later step.

Parity is checked on the identification metric, not only on embedding distance: MAP@5 (services.core.identification:
FAISS gallery, best score per individual, `new_individual` by threshold, Kaggle's MAP@5) of the reduced model
against the fp32 model on the same gallery and queries, thresholds cross-fitted (services.core.identification.tuning
.cross_fitted_map5) and, as deployed, the reduced model scored at the fp32 model's tuned threshold.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT_CALIBRATION_IMAGES = 64
DEFAULT_MAP5_TOLERANCE = 0.005
DEFAULT_PARITY_QUERIES = 400
EMBED_BATCH = 16


# ----------------------------------------------------------------------------- crops of a data set
def _dataset(data_dir: Path):
    from training.data import load_dataset

    return load_dataset(Path(data_dir))


def crops_of(data, images: Sequence[str], image_size: int, box_source: str | None) -> np.ndarray:
    """float32 (N, S, S, 3) in [0, 255]: the eval path (services.core.imaging, as the server) of `images`."""
    return np.stack([data.eval_input(image, image_size, box_source) for image in images]).astype(np.float32)


def calibration_crops(data_dir: Path, image_size: int, count: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0,
                      box_source: str | None = "fullbody") -> np.ndarray:
    """`count` training crops drawn at random (seeded) from the data's train split."""
    data = _dataset(data_dir)
    images = [row.image for row in data.train]
    chosen = np.random.default_rng(seed).permutation(len(images))[:count]
    return crops_of(data, [images[i] for i in sorted(chosen)], image_size, box_source)


# ----------------------------------------------------------------------------- conversions
DEAD_CHANNEL_WEIGHT = 1e-5


def revive_dead_channels(model) -> int:
    """Give every all-zero output channel of a Conv weight (EfficientNet-Lite's ImageNet weights have some: the
    channel is its bias alone) one tiny weight, in place; returns how many. onnxruntime's quantiser derives a
    channel's weight scale from its largest weight: 0 there makes the int32 bias (bias / (input scale x weight
    scale)) infinite, and the channel's output becomes garbage (a dead ReLU6 channel came out at ~6). 1e-5 on
    one input changes the float output by at most 1e-5 x the input range."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    revived = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        tensor = initializers[node.input[1]]
        weights = numpy_helper.to_array(tensor).copy()
        flat = weights.reshape(weights.shape[0], -1)
        dead = np.flatnonzero(np.abs(flat).max(axis=1) == 0)
        if dead.size:
            flat[dead, 0] = DEAD_CHANNEL_WEIGHT
            tensor.CopyFrom(numpy_helper.from_array(flat.reshape(weights.shape), tensor.name))
            revived += int(dead.size)
    return revived


DEFAULT_FP32_LEADING_CONVS = 0  # every Conv in int8: meets the MAP@5 parity on the held-out look (bench embedder)
MIXED_FP32_LEADING_CONVS = 12  # the fallback (--int8-fp32-convs 12) for a model whose all-int8 MAP@5 is refused


CALIBRATIONS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}  # onnxruntime's names
ACTIVATIONS = ("Clip", "Relu", "Sigmoid", "Mul", "HardSigmoid", "HardSwish", "BatchNormalization")


def fp32_ends(nodes: Sequence) -> tuple[list[str], list[str]]:
    """(input nodes, head nodes): the names of the nodes before the first Conv (the input's rescaling and
    normalisation) and of the nodes after the last Conv and its activation (pooling, embedding layers, L2
    normalisation; from the first MatMul/Gemm at the latest). Quantised, the input's per-channel Mul/Add run as
    uint8 broadcasts over 3 channels (QLinearAdd 6.1% + QLinearMul 5.2% of B5@456's int8 time at batch 8; kept
    fp32, B5 int8 went from 1.97x to 2.06x fp32 at batch 8, side by side); the head has no Conv to speed up, and a
    quantised L2 normalisation gives a uint8 embedding (the general identifier has no MatMul: its GeM pooling and
    L2 normalisation were all int8)."""
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    first_matmul = next((i for i, n in enumerate(nodes) if n.op_type in ("MatMul", "Gemm")), len(nodes))
    if not convs:
        return [], [n.name for n in nodes[first_matmul:]]
    start, chain = convs[-1] + 1, set(nodes[convs[-1]].output)
    while start < len(nodes) and nodes[start].op_type in ACTIVATIONS and chain & set(nodes[start].input):
        chain.update(nodes[start].output)
        start += 1
    return [n.name for n in nodes[:convs[0]]], [n.name for n in nodes[min(start, first_matmul):]]


U8_WEIGHTS = ("auto", "none", "dense")  # which dense Convs take uint8 weights (quantize_int8's u8_weights)
U8_SWEEP_IMAGES = 8  # calibration crops the auto sweep compares embeddings on
U8_MIN_GAIN = 0.0005  # mean embedding cosine to fp32 a Conv's uint8 weights must gain to be kept
U8_PROGRESS_EVERY = 10  # a progress line every this many per-Conv trials


def dense_convs(model) -> dict[str, Any]:
    """{name: weight DequantizeLinear node} of the QDQ model's Convs with group 1 whose weights are an int8
    initializer (the depthwise Convs run another kernel, which accumulates in int32)."""
    initializers = {i.name for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    out = {}
    for node in model.graph.node:
        dequantize = producers.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if dequantize is not None and dequantize.op_type == "DequantizeLinear" and group == 1 \
                and dequantize.input[0] in initializers:
            out[node.name] = dequantize
    return out


def uint8_weights(model, convs: Sequence[str]):
    """The chosen Convs' symmetric int8 weights stored as uint8 with zero point 128, in place: the dequantised
    weights are the same numbers, but onnxruntime runs those Convs with its U8U8 kernel instead of U8S8. On x86
    without VNNI (AVX2 only) U8S8 multiplies with VPMADDUBSW, which adds each pair of uint8 x int8 products into
    a saturating int16: two activations near 255 times two same-sign weights near 127 overflow it (measured on
    the general identifier here: embedding cosine to fp32 0.967 on nyala test, 0.9957 with every dense Conv's
    weights uint8, which is also what the QDQ graph gives computed in fp32). Returns `model`."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    table = dense_convs(model)
    for name in convs:
        dequantize = table[name]
        tensor = initializers[dequantize.input[0]]
        weights = numpy_helper.to_array(tensor)
        if weights.dtype != np.int8:
            raise ValueError(f"{name}: weights are {weights.dtype}, expected int8")
        zero = numpy_helper.to_array(initializers[dequantize.input[2]]) if len(dequantize.input) > 2 else np.zeros(1)
        if np.any(zero != 0):
            raise ValueError(f"{name}: asymmetric int8 weights (zero point != 0) cannot be moved to uint8")
        tensor.CopyFrom(numpy_helper.from_array((weights.astype(np.int16) + 128).astype(np.uint8), tensor.name))
        zero_name = f"{dequantize.input[0]}_u8_zero_point"
        model.graph.initializer.append(numpy_helper.from_array(np.full(np.shape(zero), 128, np.uint8), zero_name))
        if len(dequantize.input) > 2:
            dequantize.input[2] = zero_name
        else:
            dequantize.input.append(zero_name)
    return model


def _mean_cosine(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.mean(np.sum(reference * other, axis=1)
                         / (np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1))))


def saturating_convs(int8_path: Path, fp32_path: Path, crops: np.ndarray,
                     min_gain: float = U8_MIN_GAIN) -> dict[str, float]:
    """{Conv: gain} of the dense Convs whose uint8 weights alone raise the mean embedding cosine to fp32 on
    `crops` by more than `min_gain` on this machine (one session per Conv, after one with every dense Conv's weights
    uint8: where that gains nothing, e.g. where U8S8 does not saturate (VNNI, AMX), none is tried or chosen)."""
    import onnx

    base = onnx.load(str(int8_path))
    candidates = list(dense_convs(base))
    reference = embed_crops(fp32_path, crops)
    trial = Path(int8_path).with_name(Path(int8_path).stem + ".trial.onnx")

    def cosine(model) -> float:
        onnx.save(model, str(trial))
        return _mean_cosine(reference, embed_crops(trial, crops))

    try:
        before = cosine(base)
        gains = {}
        if candidates and cosine(uint8_weights(onnx.load(str(int8_path)), candidates)) - before <= min_gain:
            candidates = []  # no saturation here (VNNI/AMX, or none in this model): one trial, not one per Conv
        started = time.perf_counter()
        for number, name in enumerate(candidates, 1):
            model = onnx.load(str(int8_path))
            gains[name] = cosine(uint8_weights(model, [name])) - before
            if number % U8_PROGRESS_EVERY == 0 or number == len(candidates):  # B5: ~150 trials, minutes
                log.info("int8: uint8-weights trials %d/%d (%.0f s)", number, len(candidates),
                         time.perf_counter() - started)
    finally:
        trial.unlink(missing_ok=True)
    chosen = {name: round(gain, 5) for name, gain in sorted(gains.items(), key=lambda kv: -kv[1]) if gain > min_gain}
    log.info("int8: %d of %d dense Convs gain > %.4f cosine with uint8 weights (base cosine %.4f)", len(chosen),
             len(candidates), min_gain, before)
    return chosen


def quantize_int8(fp32_path: Path, out_path: Path, crops: np.ndarray, *, per_channel: bool = True,
                  input_name: str = "image", fp32_leading_convs: int = DEFAULT_FP32_LEADING_CONVS,
                  fp32_head: bool = True, fp32_input: bool = True, calibration: str = "minmax",
                  u8_weights: str = "auto") -> dict[str, Any]:
    """Static QDQ int8 quantisation of `fp32_path` calibrated on `crops`; returns what was done (manifest).

    Mixed precision (optional): the first `fp32_leading_convs` Convs stay fp32 (the high-resolution early blocks
    carry most of the error on the fine-tuned Lite0: embedding cosine to fp32 0.94 with every Conv in int8, 0.976
    with the first 4 kept in fp32, 0.991 with the first 12, ~25% of Lite0's MACs; yet MAP@5 on the 396-query
    held-out look moved by 0.002 with every Conv in int8, hence the default 0). With `fp32_head` the
    head (every node after the last Conv and its activation: pooling, embedding MatMul, BatchNorm, L2
    normalisation, species) stays fp32, with `fp32_input` the input's rescaling before the first Conv (fp32_ends);
    every other Conv runs in int8. `calibration`: minmax (default), percentile or entropy (onnxruntime's
    CalibrationMethod). `u8_weights`: `auto` (default) gives uint8 weights to the dense Convs whose int16 pair
    sums saturate on this machine (saturating_convs, on U8_SWEEP_IMAGES calibration crops), `dense` to every
    dense Conv, `none` to none (uint8_weights)."""
    if u8_weights not in U8_WEIGHTS:
        raise ValueError(f"u8_weights must be one of {', '.join(U8_WEIGHTS)} (got {u8_weights!r})")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(range(len(crops)))

        def get_next(self):
            index = next(self.rows, None)
            return None if index is None else {input_name: crops[index: index + 1]}

    started = time.perf_counter()
    out_path = Path(out_path)
    prepared = out_path.with_name(out_path.stem + ".prep.onnx")
    import onnx

    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)  # folds BatchNorms into Convs
        source = prepared
    except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation; quantise the original then
        log.warning("quantisation pre-processing failed (%s): quantising the export as it is", exc)
        source = Path(fp32_path)
    model = onnx.load(str(source))
    revived = revive_dead_channels(model)
    onnx.save(model, str(prepared))
    source = prepared
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    inputs, head = fp32_ends(list(model.graph.node))
    inputs, head = (inputs if fp32_input else []), (head if fp32_head else [])
    excluded = inputs + convs[:max(0, fp32_leading_convs)] + head
    try:
        quantize_static(str(source), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, CALIBRATIONS[calibration]), nodes_to_exclude=excluded,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    finally:
        prepared.unlink(missing_ok=True)
        for leftover in out_path.parent.glob("augmented_model*.onnx"):
            leftover.unlink(missing_ok=True)
    gains: dict[str, float] = {}
    if u8_weights != "none":
        if u8_weights == "auto":
            gains = saturating_convs(out_path, Path(fp32_path), crops[:U8_SWEEP_IMAGES])
        chosen = list(gains) if u8_weights == "auto" else list(dense_convs(onnx.load(str(out_path))))
        if chosen:
            onnx.save(uint8_weights(onnx.load(str(out_path)), chosen), str(out_path))
        gains = gains or dict.fromkeys(chosen, None)
    info = {"method": "onnxruntime static quantisation", "format": "QDQ", "weights": "int8 per-channel" if per_channel
            else "int8 per-tensor", "activations": "uint8 asymmetric", "calibration": CALIBRATIONS[calibration],
            "calibration_images": int(len(crops)), "compute": "int8", "dead_channels_revived": revived,
            "fp32_nodes": {"leading_convs": min(len(convs), max(0, fp32_leading_convs)), "of_convs": len(convs),
                           "head_nodes": len(head), "input_nodes": len(inputs)},
            "uint8_weights": {"mode": u8_weights, "convs": gains}, "seconds": round(time.perf_counter() - started, 1)}
    log.info("int8: quantised %s -> %s (%d calibration crops, %.1f s)", fp32_path, out_path, len(crops),
             info["seconds"])
    return info


def _to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def bf16_weights(fp32_path: Path, out_path: Path, min_size: int = 16) -> dict[str, Any]:
    """Every float32 initializer of >= `min_size` values stored as bfloat16 + Cast(to float32): bf16 weights,
    fp32 compute (onnxruntime's CPU provider has no bf16 kernels; the casts are folded at session load)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(fp32_path))
    graph = model.graph
    kept, casts, converted = [], [], 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_size:
            kept.append(init)
            continue
        values = onnx.numpy_helper.to_array(init)
        stored = helper.make_tensor(init.name + "__bf16", TensorProto.BFLOAT16, list(init.dims),
                                    _to_bf16_bits(values).tobytes(), raw=True)
        kept.append(stored)
        casts.append(helper.make_node("Cast", [stored.name], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "__cast"))
        converted += values.size
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.save(model, str(out_path))
    return {"method": "bf16 weights (round to nearest even) + Cast to float32", "compute": "fp32",
            "bf16_values": int(converted),
            "note": "onnxruntime's CPU provider has no bfloat16 kernels (Conv/MatMul): computation stays fp32"}


# ----------------------------------------------------------------------------- identification parity
def onnx_session(path: Path, threads: int = 0):
    """An onnxruntime CPU session whose idle intra-op threads sleep instead of spinning. With spinning (the
    default), the sessions that `bench embedder` interleaves in one process keep each other's threads busy on a
    2-core machine: measured here, Lite0 batch 8 fp32 10.8 -> 5.8 ms/image and int8 6.4 -> 2.5 ms/image once
    spinning is off, and the int8 speed-up 1.7x -> 2.3x (its best-of times, 2.36x, were not affected)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def embed_crops(path_or_session, crops: np.ndarray, batch: int = EMBED_BATCH) -> np.ndarray:
    session = onnx_session(path_or_session) if isinstance(path_or_session, (str, Path)) else path_or_session
    out = [session.run(["embedding"], {"image": crops[i: i + batch]})[0] for i in range(0, len(crops), batch)]
    return np.concatenate(out).astype(np.float32)


class ParitySet:
    """Gallery and queries of a labelled data set, cropped once: the data's train split as the gallery and its
    test split with truth (test_truth.csv) as the queries; without truth, each individual's last train photo of
    those with several is a query against the rest. At most `max_queries` queries (seeded choice)."""

    def __init__(self, data_dir: Path, image_size: int, box_source: str | None = "fullbody",
                 max_queries: int = DEFAULT_PARITY_QUERIES, seed: int = 0):
        data = _dataset(data_dir)
        if data.truth:
            gallery = [(r.image, r.individual_id) for r in data.train]
            queries = [(r.image, r.individual_id) for r in data.truth]
        else:
            by_id: dict[str, list[str]] = {}
            for row in data.train:
                by_id.setdefault(row.individual_id, []).append(row.image)
            queries = [(sorted(v)[-1], k) for k, v in by_id.items() if len(v) > 1]
            held = {q for q, _ in queries}
            gallery = [(r.image, r.individual_id) for r in data.train if r.image not in held]
        if len(queries) > max_queries:
            keep = sorted(np.random.default_rng(seed).permutation(len(queries))[:max_queries])
            queries = [queries[i] for i in keep]
        self.data_dir = str(data_dir)
        self.gallery_ids = [i for _, i in gallery]
        self.gallery_images = [g for g, _ in gallery]
        self.truths = [i for _, i in queries]
        self.groups = [image if truth == "new_individual" else truth for image, truth in queries]
        self.gallery_crops = crops_of(data, self.gallery_images, image_size, box_source)
        self.query_crops = crops_of(data, [q for q, _ in queries], image_size, box_source)

    def candidates(self, embed):
        from services.core.identification import build_gallery, rank_candidates

        gallery = build_gallery(embed(self.gallery_crops), self.gallery_ids, ["unknown"] * len(self.gallery_ids),
                                self.gallery_images)
        return rank_candidates(gallery, embed(self.query_crops), 50)


def identification_scores(parity: ParitySet, models: dict[str, Any], reference: str = "fp32") -> dict[str, dict]:
    """{name: {"map5" (cross-fitted thresholds), "map5_in_sample", "map5_at_reference_threshold"}} of each model
    (a path or an onnxruntime session) on the parity set; the reference's best in-sample threshold is applied to
    every model (a reduced model served with the fp32 model's tuning)."""
    from services.core.identification.tuning import cross_fitted_map5, sweep_threshold

    results: dict[str, dict] = {}
    candidates = {name: parity.candidates(lambda crops, m=model: embed_crops(m, crops)) for name, model in models.items()}
    threshold = sweep_threshold(candidates[reference], parity.truths).best
    for name, cands in candidates.items():
        fitted = cross_fitted_map5(cands, parity.truths, parity.groups)
        row = {"map5": fitted["map5"], "map5_in_sample": fitted["in_sample"], "queries": len(parity.truths),
               "map5_at_reference_threshold": round(sweep_threshold(cands, parity.truths).at(threshold), 4),
               "reference_threshold": threshold}
        results[name] = row
    return results


def embedding_agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    cosine = np.sum(reference * other, axis=1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1))
    return {"max_abs_diff": round(float(np.max(np.abs(reference - other))), 5),
            "mean_cosine": round(float(np.mean(cosine)), 5), "min_cosine": round(float(np.min(cosine)), 5)}
