"""Shared set-up of the export and model-repository tests; the fixtures `snapshot_run` and `exported`
(tests/conftest.py) build theirs once per session with `build_snapshot_run` and `export_last_snapshot`.

`snapshot_run`: a run directory in `whaleid train`'s layout (config.yaml, labels.json, checkpoints/) with two
snapshots of the b0-tiny model (64 px, species head over SPECIES, one of them misspelt as in Kaggle's labels so
the export's name fixes are exercised) initialised with different seeds. Export and serving are about carrying
*whatever* weights a snapshot has faithfully to Triton, so no training is needed (it would cost minutes).
`exported`: the last snapshot exported by `whaleid export` (SavedModel + ONNX + manifest, ~30 s: the costliest
step, so only one EfficientNet is converted; blends pair it with `fake_export`s).
`crops`: encoded crops (JPEG and PNG) of varied sizes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

EPOCHS = (1, 2)
NUM_CLASSES, SPECIES = 8, ["beluga", "kiler_whale"]
SERVED_SPECIES = ["beluga", "killer_whale"]  # SPECIES with training.data.LABEL_FIXES applied (the manifest's names)


def build_snapshot_run(root: Path) -> Path:
    """`root` made a run directory in `whaleid train`'s layout with the EPOCHS snapshots (the `snapshot_run` fixture)."""
    import keras

    from training.config import load_config, save_config
    from training.embed import CHECKPOINT_DIR, LABELS_FILE, checkpoint_name
    from training.model import build_models

    config = load_config("b0-tiny")
    save_config(config, root / "config.yaml")
    (root / LABELS_FILE).write_text(json.dumps({"classes": [f"id{i}" for i in range(NUM_CLASSES)],
                                                "species": SPECIES}))
    (root / CHECKPOINT_DIR).mkdir()
    for epoch in EPOCHS:
        keras.utils.set_random_seed(epoch)
        train_model, _ = build_models(config, NUM_CLASSES, len(SPECIES))
        train_model.save_weights(root / CHECKPOINT_DIR / checkpoint_name(epoch))
    return root


def export_last_snapshot(run: Path, root: Path) -> Path:
    """`root` made an EXPORTS dir with the last snapshot of `run` exported by `whaleid export --run RUN --snapshots
    epoch_NNN --out ROOT` (the command line, in this process): the one fp32 conversion of the session, which
    test_precision also checks as the command's fp32 export."""
    from services.cli.main import main

    logging.getLogger("training.export").setLevel(logging.INFO)
    code = main(["export", "--run", str(run), "--snapshots", f"epoch_{EPOCHS[-1]:03d}", "--out", str(root)])
    if code != 0:
        raise RuntimeError(f"whaleid export of {run} exited {code}")
    return root


def crops(count: int = 6) -> list[bytes]:
    """Encoded crops: JPEGs of different sizes (the bench's images) and PNGs (lossless, as the worker sends)."""
    from bench.triton_serving import bench_images
    from services.core.imaging import encode_png

    rng = np.random.default_rng(7)
    jpegs = bench_images(count // 2, seed=3, size=(200, 150)) + bench_images(1, seed=4, size=(90, 300))
    pngs = [encode_png(rng.integers(0, 256, (40 + 30 * i, 120, 3), dtype=np.uint8)) for i in range(count - len(jpegs))]
    return jpegs + pngs


def tiny_onnx(path: Path, image_size: int, dim: int, layout: str = "NHWC", seed: int = 0, species: int = 0) -> Path:
    """A small real ONNX embedder (mean colour -> linear -> L2 norm) with the export's names: for repository
    tests that need many exports of chosen shapes without converting EfficientNets. `species` > 0 adds the
    output `species` (softmax of a linear map of the mean colour)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nhwc = layout == "NHWC"
    shape = ["batch", image_size, image_size, 3] if nhwc else ["batch", 3, image_size, image_size]
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(3, dim)).astype(np.float32)
    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2] if nhwc else [2, 3], keepdims=0),
             helper.make_node("MatMul", ["mean", "w"], ["z"]),
             helper.make_node("LpNormalization", ["z"], ["embedding"], axis=1, p=2)]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])]
    initializers = [numpy_helper.from_array(weights, "w")]
    if species:
        initializers.append(numpy_helper.from_array((rng.normal(size=(3, species)) / 40).astype(np.float32), "ws"))
        nodes += [helper.make_node("MatMul", ["mean", "ws"], ["logits"]),
                  helper.make_node("Softmax", ["logits"], ["species"], axis=1)]
        outputs.append(helper.make_tensor_value_info("species", TensorProto.FLOAT, ["batch", species]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def fake_export(exports: Path, model_id: str, image_size: int = 64, dim: int = 512, layout: str = "NHWC",
                seed: int = 0, species: list[str] | tuple[str, ...] = ()) -> Path:
    """EXPORTS/<model_id>/{model.onnx, manifest.json} as training.export writes them, around `tiny_onnx`
    (with a species output over `species` when given)."""
    from services.core.checksums import sha256_file
    from training.export import MANIFEST, build_manifest

    folder = exports / model_id
    onnx_path = tiny_onnx(folder / "model.onnx", image_size, dim, layout, seed, len(species))
    info = {"model_id": model_id, "backbone": "tiny", "image_size": image_size, "embedding_size": dim, "fold": 0,
            "epoch": 1, "eval_box_source": "", "species": list(species)}
    manifest = build_manifest(info, {"model.onnx": sha256_file(onnx_path)}, 0.0, "test", 0.0 if species else None)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def fake_detector_export(folder: Path, image_size: int = 96, seed: int = 0) -> Path:
    """FOLDER/{model.onnx, detector.json} as `whaleid detector export` writes them, around a small real ONNX
    detector (mean colour -> linear -> sigmoid: a box inside the frame and a score) with the export's names
    (`image` -> `box` (N, 4) normalised, `score` (N,)): for repository tests that serve a detector without
    training one (tests/integration/test_detector.py trains and serves a real one)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from services.core.checksums import sha256_file

    rng = np.random.default_rng(seed)
    initializers = [numpy_helper.from_array((rng.normal(size=(3, 4)) / 60).astype(np.float32), "wb"),
                    numpy_helper.from_array((rng.normal(size=(3, 1)) / 60).astype(np.float32), "ws"),
                    numpy_helper.from_array(np.array([0.5, 0.5, 0.5, 0.5], np.float32), "half"),
                    numpy_helper.from_array(np.array([0.0, 0.0, 0.5, 0.5], np.float32), "origin"),
                    numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["mean", "wb"], ["zb"]),
             helper.make_node("Sigmoid", ["zb"], ["sb"]),
             helper.make_node("Mul", ["sb", "half"], ["scaled"]),
             helper.make_node("Add", ["scaled", "origin"], ["box"]),  # x0, y0 < 0.5 <= x1, y1
             helper.make_node("MatMul", ["mean", "ws"], ["zs"]),
             helper.make_node("Sigmoid", ["zs"], ["s1"]),
             helper.make_node("Reshape", ["s1", "flat"], ["score"])]
    graph = helper.make_graph(
        nodes, "tiny_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", image_size, image_size, 3])],
        [helper.make_tensor_value_info("box", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    manifest = {"kind": "detector", "image_size": image_size, "backbone": "tiny",
                "files": {"model.onnx": sha256_file(folder / "model.onnx")}}
    (folder / "detector.json").write_text(json.dumps(manifest))
    return folder
