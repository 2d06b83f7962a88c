"""training.quantize.quantize_int8 on a small generated embedder (input rescaling, two Convs with swish and ReLU6,
GeM-like pooling, L2 normalisation, no MatMul as in the general identifier): the Convs run in int8, the input's
rescaling and the head stay fp32, and the embedding stays close to fp32."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from training import quantize  # noqa: E402

SIZE, CHANNELS = 16, 8


def _embedder(path):
    rng = np.random.default_rng(0)

    def const(name, value):
        return numpy_helper.from_array(np.asarray(value, np.float32), name)

    inits = [const("scale", [1 / 127.5] * 3), const("offset", [-1.0] * 3), const("eps", 1e-6), const("p", 3.0),
             const("inv_p", 1 / 3.0), const("w1", rng.normal(0, 0.3, (CHANNELS, 3, 3, 3))),
             const("b1", rng.normal(0, 0.1, CHANNELS)), const("w2", rng.normal(0, 0.3, (CHANNELS, CHANNELS, 1, 1))),
             const("b2", rng.normal(0, 0.1, CHANNELS)), const("lo", 0.0), const("hi", 6.0),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [
        helper.make_node("Mul", ["image", "scale"], ["scaled"], name="in_mul"),
        helper.make_node("Add", ["scaled", "offset"], ["normed"], name="in_add"),
        helper.make_node("Transpose", ["normed"], ["nchw"], perm=[0, 3, 1, 2], name="in_transpose"),
        helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="swish_sigmoid"),
        helper.make_node("Mul", ["c1", "s1"], ["a1"], name="swish_mul"),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["a2"], name="relu6"),
        helper.make_node("Max", ["a2", "eps"], ["clamped"], name="gem_max"),
        helper.make_node("Pow", ["clamped", "p"], ["cubed"], name="gem_pow"),
        helper.make_node("ReduceMean", ["cubed"], ["pooled4"], axes=[2, 3], keepdims=0, name="gem_mean"),
        helper.make_node("Pow", ["pooled4", "inv_p"], ["pooled"], name="gem_root"),
        helper.make_node("Mul", ["pooled", "pooled"], ["square"], name="l2_square"),
        helper.make_node("ReduceSum", ["square", "axis1"], ["sum"], keepdims=1, name="l2_sum"),
        helper.make_node("Sqrt", ["sum"], ["norm"], name="l2_sqrt"),
        helper.make_node("Div", ["pooled", "norm"], ["embedding"], name="l2_div"),
    ]
    graph = helper.make_graph(nodes, "embedder",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", SIZE, SIZE, 3])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", CHANNELS])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return model


def test_fp32_ends_are_the_input_rescaling_and_everything_after_the_last_conv_and_its_activation(tmp_path):
    model = _embedder(tmp_path / "model.onnx")
    inputs, head = quantize.fp32_ends(list(model.graph.node))
    assert inputs == ["in_mul", "in_add", "in_transpose"]
    assert head == ["gem_max", "gem_pow", "gem_mean", "gem_root", "l2_square", "l2_sum", "l2_sqrt", "l2_div"]


def _producers(model):
    return {out: node for node in model.graph.node for out in node.output}


def test_int8_quantises_the_convs_and_keeps_the_input_rescaling_and_head_in_fp32(tmp_path):
    import onnxruntime as ort

    _embedder(tmp_path / "model.onnx")
    crops = np.random.default_rng(1).uniform(0, 255, (12, SIZE, SIZE, 3)).astype(np.float32)
    info = quantize.quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", crops)
    assert info["fp32_nodes"]["input_nodes"] == 3 and info["fp32_nodes"]["head_nodes"] == 8
    assert info["calibration"] == "MinMax"
    model = onnx.load(str(tmp_path / "model.int8.onnx"))
    producers = _producers(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 and all(producers[c.input[0]].op_type == "DequantizeLinear" for c in convs)
    # the input goes to the float Mul as it is, and the embedding comes out of the float L2 division
    assert [n.op_type for n in model.graph.node if "image" in n.input] == ["Mul"]
    assert producers["embedding"].op_type == "Div"
    assert producers[producers["embedding"].input[0]].op_type == "Pow"
    fp32 = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(tmp_path / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    a, b = fp32.run(None, {"image": crops})[0], int8.run(None, {"image": crops})[0]
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)  # a float L2 normalisation: unit length
    assert np.min(np.sum(a * b, axis=1)) > 0.99


def test_the_old_layout_quantises_the_ends_when_asked(tmp_path):
    _embedder(tmp_path / "model.onnx")
    crops = np.random.default_rng(1).uniform(0, 255, (8, SIZE, SIZE, 3)).astype(np.float32)
    info = quantize.quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", crops, fp32_input=False,
                                  fp32_head=False, calibration="percentile")
    assert info["fp32_nodes"]["input_nodes"] == 0 and info["fp32_nodes"]["head_nodes"] == 0
    assert info["calibration"] == "Percentile"
    model = onnx.load(str(tmp_path / "model.int8.onnx"))
    assert [n.op_type for n in model.graph.node if "image" in n.input] == ["QuantizeLinear"]


def _session(path, optimised=True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimised:  # the QDQ graph as written: Q/DQ in float, the Convs in fp32 (no integer kernel)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _dequantised_weights(model):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for name, dequantize in quantize.dense_convs(model).items():
        q, scale, zero = (inits[dequantize.input[i]] for i in range(3))
        out[name] = (q.astype(np.float32) - zero.astype(np.float32).reshape(-1, 1, 1, 1)) * scale.reshape(-1, 1, 1, 1)
    return out


def test_uint8_weights_are_the_same_numbers_and_give_the_qdq_graphs_own_output(tmp_path):
    _embedder(tmp_path / "model.onnx")
    crops = np.random.default_rng(1).uniform(0, 255, (8, SIZE, SIZE, 3)).astype(np.float32)
    info = quantize.quantize_int8(tmp_path / "model.onnx", tmp_path / "int8.onnx", crops, u8_weights="none")
    assert info["uint8_weights"] == {"mode": "none", "convs": {}}
    int8 = onnx.load(str(tmp_path / "int8.onnx"))
    assert sorted(quantize.dense_convs(int8)) == ["conv1", "conv2"]
    before = _dequantised_weights(int8)
    converted = quantize.uint8_weights(int8, ["conv1", "conv2"])
    onnx.save(converted, str(tmp_path / "u8.onnx"))
    inits = {i.name: i for i in converted.graph.initializer}
    assert all(numpy_helper.to_array(inits[d.input[0]]).dtype == np.uint8
               for d in quantize.dense_convs(converted).values())
    after = _dequantised_weights(converted)
    assert all(np.array_equal(before[name], after[name]) for name in before)
    # the integer kernels on uint8 weights compute what the QDQ graph means (its fp32 reading), on any x86
    simulated = _session(tmp_path / "int8.onnx", optimised=False).run(None, {"image": crops})[0]
    kernel = _session(tmp_path / "u8.onnx").run(None, {"image": crops})[0]
    assert np.min(np.sum(simulated * kernel, axis=1)) > 0.999


def test_u8_weights_dense_takes_every_dense_conv_and_auto_only_those_that_gain(tmp_path):
    _embedder(tmp_path / "model.onnx")
    crops = np.random.default_rng(1).uniform(0, 255, (8, SIZE, SIZE, 3)).astype(np.float32)
    info = quantize.quantize_int8(tmp_path / "model.onnx", tmp_path / "dense.onnx", crops, u8_weights="dense")
    assert info["uint8_weights"] == {"mode": "dense", "convs": {"conv1": None, "conv2": None}}
    assert _session(tmp_path / "dense.onnx").run(None, {"image": crops})[0].shape == (8, CHANNELS)
    quantize.quantize_int8(tmp_path / "model.onnx", tmp_path / "none.onnx", crops, u8_weights="none")
    every = quantize.saturating_convs(tmp_path / "none.onnx", tmp_path / "model.onnx", crops, min_gain=-1.0)
    assert sorted(every) == ["conv1", "conv2"] and all(-1.0 < gain < 1.0 for gain in every.values())
    assert quantize.saturating_convs(tmp_path / "none.onnx", tmp_path / "model.onnx", crops, min_gain=1.0) == {}
    assert sorted(tmp_path.iterdir()) == sorted(tmp_path / n for n in ("model.onnx", "dense.onnx", "none.onnx"))


def test_an_unknown_u8_weights_mode_is_refused_before_any_work(tmp_path):
    _embedder(tmp_path / "model.onnx")
    crops = np.zeros((2, SIZE, SIZE, 3), np.float32)
    with pytest.raises(ValueError, match="u8_weights must be one of auto, none, dense"):
        quantize.quantize_int8(tmp_path / "model.onnx", tmp_path / "int8.onnx", crops, u8_weights="all")
    assert not (tmp_path / "int8.onnx").exists()
