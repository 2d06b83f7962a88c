"""The measurement of `whaleid bench embedder` (bench/bench_embedder.py): fp32, bf16 and int8 embedders side by side.

For the default model (lite0: EfficientNet-Lite0 at 224 px; the trained run when one is given or found, else the
pretrained backbone with an untrained head), the general identifier when bench identification_quality left it
(lite2: EfficientNet-Lite2 at 384 px, ImageNet features GeM-pooled, no training; `--no-lite2` skips it) and, unless
`--no-b5`, EfficientNetB5 at 456 px (untrained: speed only), it reports:
  - ms per image at batch 1 and 8 for each precision, the precisions interleaved round by round (medians), so a
    shared machine's noise hits them alike;
  - the model's FLOPs (2 x MACs of its Conv/MatMul/Gemm nodes, from the ONNX graph's inferred shapes) and the
    ratio of the measured time to this machine's fp32 limit: FLOPs / the SGEMM rate the bench measures itself
    (numpy float32 matmul, best of several);
  - MAP@5 of each precision on a held-out synthetic set of another look than training (services.core.identification:
    gallery = its train split, queries = its test split, thresholds cross-fitted; also at the fp32 threshold).
int8 is calibrated on crops of the training data, never the held-out set. Targets: int8 >= 2x faster than fp32
(batch 8), MAP@5 loss <= 0.005. Exports are cached under --work (a B5 export takes minutes here).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from training import quantize

log = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"  # bench/results: the checkout's (with an editable install)
IQ_WORK = RESULTS / "identification_quality_work"  # bench identification_quality's runs and looks, when present
TARGET_SPEEDUP, TARGET_MAP5_LOSS = 2.0, 0.005


# ----------------------------------------------------------------------------- the machine's limit
def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matrix-multiply rate (numpy / its BLAS, all cores), best of `repeats`."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def model_gflops(onnx_path: Path) -> float:
    """GFLOPs of one image: 2 x the multiply-accumulates of every Conv, MatMul and Gemm (shapes inferred at
    batch 1)."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path))
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv" and node.output[0] in shapes and node.input[1] in weights:
            out = shapes[node.output[0]]
            kernel = weights[node.input[1]]  # (out, in/group, kh, kw)
            macs += int(np.prod(out)) * int(np.prod(kernel[1:]))
        elif node.op_type in ("MatMul", "Gemm") and node.output[0] in shapes:
            b = weights.get(node.input[1]) or shapes.get(node.input[1])
            if b:
                macs += int(np.prod(shapes[node.output[0]])) * int(b[0])
    return 2.0 * macs / 1e9


# ----------------------------------------------------------------------------- models
def _export(model, info: dict, out_dir: Path) -> Path:
    from training.export import export_model

    folder = out_dir / info["model_id"]
    if not (folder / "model.onnx").is_file():
        export_model(model, info, out_dir)
    return folder / "model.onnx"


def default_model(work: Path, run: Path | None, name: str = "lite0") -> tuple[Path, dict]:
    """fp32 ONNX of the default model: the trained lite0 `run` (or any run, e.g. the general identifier, as
    `name`; exported once), else pretrained Lite0 with an untrained embedding head."""
    if run is not None and (Path(run) / "checkpoints").is_dir():
        from training.export import export_run, load_serving_model

        model, info = load_serving_model(Path(run))
        folder = work / "exports" / name / info["model_id"]
        if not (folder / "model.onnx").is_file():
            export_run(Path(run), work / "exports" / name)
        return folder / "model.onnx", {"model": name, "weights": f"run {run}", **_info(info)}
    import keras

    from training.config import load_config
    from training.model import build_models

    config = load_config("lite0")
    keras.utils.set_random_seed(0)
    _, model = build_models(config, num_classes=8)
    info = {"model_id": "lite0-pretrained", "backbone": config["backbone"], "image_size": config["image_size"],
            "embedding_size": config["embedding_size"], "fold": None, "epoch": 0,
            "eval_box_source": config.get("eval_box_source", "")}
    return _export(model, info, work / "exports" / "lite0"), {"model": "lite0", "weights": "ImageNet backbone, "
                                                              "untrained head", **_info(info)}


def b5_model(work: Path, image_size: int = 456) -> tuple[Path, dict]:
    """fp32 ONNX of EfficientNetB5 at `image_size`, untrained (speed only: ImageNet weights need a download)."""
    import keras

    from training.config import load_config
    from training.model import build_models

    config = {**load_config("b5-paper"), "weights": None, "image_size": image_size}
    info = {"model_id": f"b5-{image_size}-untrained", "backbone": config["backbone"], "image_size": image_size,
            "embedding_size": config["embedding_size"], "fold": None, "epoch": 0,
            "eval_box_source": config.get("eval_box_source", "")}
    path = work / "exports" / "b5" / info["model_id"] / "model.onnx"
    if not path.is_file():
        keras.utils.set_random_seed(0)
        _, model = build_models(config, num_classes=8)
        _export(model, info, work / "exports" / "b5")
    return path, {"model": "b5", "weights": "untrained (random init)", **_info(info)}


def _info(info: dict) -> dict:
    return {"model_id": info["model_id"], "backbone": info["backbone"], "image_size": int(info["image_size"]),
            "eval_box_source": info.get("eval_box_source") or "fullbody"}


INT8_VARIANTS = {  # precision name -> quantize_int8 keywords; "int8" is what `whaleid export --precision int8` writes
    "int8": {},
    "int8_mixed12": {"fp32_leading_convs": quantize.MIXED_FP32_LEADING_CONVS},  # the first 12 Convs fp32
    "int8_s8": {"u8_weights": "none"},  # every dense Conv's weights int8 (U8S8, saturating on AVX2 without VNNI)
}


def reduced_models(fp32: Path, calibration: np.ndarray,
                   precisions=("bf16", "int8", "int8_mixed12")) -> dict[str, tuple[Path, dict]]:
    """{precision: (onnx path, how it was made)}, converted next to `fp32` once (cached)."""
    out = {"fp32": (fp32, {"compute": "fp32"})}
    for precision in precisions:
        path = fp32.with_name(f"model.{precision}.onnx")
        meta = path.with_suffix(".json")
        if not path.is_file() or not meta.is_file():
            if precision == "bf16":
                how = quantize.bf16_weights(fp32, path)
            else:
                how = quantize.quantize_int8(fp32, path, calibration, **INT8_VARIANTS[precision])
            meta.write_text(json.dumps(how))
        out[precision] = (path, json.loads(meta.read_text()))
    return out


# ----------------------------------------------------------------------------- measurements
def time_precisions(paths: dict[str, Path], crops: np.ndarray, batches=(1, 8), rounds: int = 3,
                    repeats: int = 4) -> dict[str, dict[str, float]]:
    """{precision: {"b1_ms_per_image", "b8_ms_per_image"}}: medians over `rounds` interleaved rounds, each the
    median of `repeats` runs."""
    sessions = {p: quantize.onnx_session(path) for p, path in paths.items()}
    samples: dict[tuple[str, int], list[float]] = {(p, b): [] for p in paths for b in batches}
    best: dict[tuple[str, int], float] = {(p, b): float("inf") for p in paths for b in batches}
    for batch in batches:
        x = np.ascontiguousarray(crops[:batch])
        for session in sessions.values():
            session.run(None, {"image": x})  # warm-up
    for round_index in range(rounds):
        for batch in batches:
            x = np.ascontiguousarray(crops[:batch])
            for precision, session in sessions.items():
                times = [_timed(lambda s=session, f={"image": x}: s.run(None, f)) for _ in range(repeats)]
                samples[(precision, batch)].append(1000.0 * statistics.median(times) / batch)
                best[(precision, batch)] = min(best[(precision, batch)], 1000.0 * min(times) / batch)
        log.info("round %d/%d: %s", round_index + 1, rounds,
                 {f"{p}@b{b}": round(v[-1], 1) for (p, b), v in samples.items()})
    return {p: {**{f"b{b}_ms_per_image": round(statistics.median(samples[(p, b)]), 2) for b in batches},
                **{f"b{b}_best_ms_per_image": round(best[(p, b)], 2) for b in batches}} for p in paths}


def bench_model(name: str, fp32: Path, meta: dict, calibration: np.ndarray, heldout: Path | None,
                limit_gflops: float, rounds: int, map5: bool, max_queries: int,
                precisions=("bf16", "int8", "int8_mixed12")) -> dict[str, Any]:
    size = meta["image_size"]
    models = reduced_models(fp32, calibration, precisions)
    gflops = model_gflops(fp32)
    limit_ms = gflops / limit_gflops * 1000.0
    timing_crops = calibration if len(calibration) >= 8 else np.repeat(calibration, 8, axis=0)
    timings = time_precisions({p: path for p, (path, _) in models.items()}, timing_crops, rounds=rounds)
    row: dict[str, Any] = {**meta, "gflops_per_image": round(gflops, 3), "fp32_limit_ms_per_image": round(limit_ms, 2),
                           "precisions": {}}
    scores = {}
    if map5 and heldout is not None:
        parity = quantize.ParitySet(heldout, size, meta.get("eval_box_source") or "fullbody", max_queries=max_queries)
        scores = quantize.identification_scores(parity, {p: path for p, (path, _) in models.items()})
        row["heldout"] = {"data": str(heldout), "queries": len(parity.truths), "gallery": len(parity.gallery_ids)}
    for precision, (path, how) in models.items():
        t = timings[precision]
        entry = {**t, "compute": how.get("compute", precision),
                 "ratio_to_fp32_limit_b1": round(t["b1_ms_per_image"] / limit_ms, 2),
                 "ratio_to_fp32_limit_b8": round(t["b8_ms_per_image"] / limit_ms, 2),
                 "speedup_vs_fp32_b1": round(timings["fp32"]["b1_ms_per_image"] / t["b1_ms_per_image"], 2),
                 "speedup_vs_fp32_b8": round(timings["fp32"]["b8_ms_per_image"] / t["b8_ms_per_image"], 2),
                 "best_ratio_to_fp32_limit_b8": round(t["b8_best_ms_per_image"] / limit_ms, 2),
                 "best_speedup_vs_fp32_b8": round(timings["fp32"]["b8_best_ms_per_image"] / t["b8_best_ms_per_image"], 2),
                 "file_mb": round(path.stat().st_size / 1e6, 1)}
        if precision in scores:
            entry.update(map5=scores[precision]["map5"], map5_in_sample=scores[precision]["map5_in_sample"],
                         map5_at_fp32_threshold=scores[precision]["map5_at_reference_threshold"],
                         map5_loss_vs_fp32=round(scores["fp32"]["map5"] - scores[precision]["map5"], 4))
        if "note" in how:
            entry["note"] = how["note"]
        row["precisions"][precision] = entry
    int8 = row["precisions"]["int8"]
    row["targets"] = {"int8_speedup_b8": int8["speedup_vs_fp32_b8"], "int8_speedup_target": TARGET_SPEEDUP,
                      "int8_speedup_met": int8["speedup_vs_fp32_b8"] >= TARGET_SPEEDUP}
    if "map5_loss_vs_fp32" in int8:
        row["targets"].update(int8_map5_loss=int8["map5_loss_vs_fp32"], int8_map5_loss_target=TARGET_MAP5_LOSS,
                              int8_map5_met=int8["map5_loss_vs_fp32"] <= TARGET_MAP5_LOSS)
    log.info("%s: %s", name, json.dumps(row["precisions"]))
    return row


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    fig, axes = plt.subplots(1, len(models) + 1, figsize=(4.2 * (len(models) + 1), 3.6))
    colours = {"fp32": "#888", "bf16": "#49c", "int8": "#2a7", "int8_mixed12": "#c84", "int8_s8": "#7a4"}
    for ax, name in zip(axes, models, strict=False):
        row = result["models"][name]
        precisions = list(row["precisions"])
        x = np.arange(2)
        width = 0.8 / len(precisions)
        for i, p in enumerate(precisions):
            values = [row["precisions"][p]["b1_ms_per_image"], row["precisions"][p]["b8_ms_per_image"]]
            ax.bar(x + (i - (len(precisions) - 1) / 2) * width, values, width, label=p, color=colours.get(p))
        ax.axhline(row["fp32_limit_ms_per_image"], color="k", ls="--", lw=1, label="fp32 SGEMM limit")
        ax.set_xticks(x, ["batch 1", "batch 8"])
        ax.set_ylabel("ms / image")
        ax.set_title(f"{row['backbone']} @{row['image_size']} px", fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[-1]
    names = list(dict.fromkeys(p for name in models for p in result["models"][name]["precisions"]))
    for j, name in enumerate(models):
        row = result["models"][name]
        values = [row["precisions"].get(p, {}).get("map5", np.nan) for p in names]
        ax.bar(np.arange(len(values)) + j * 0.4, values, 0.4, label=name)
    ax.set_xticks(np.arange(len(names)), names, fontsize=7)
    ax.set_title("held-out MAP@5", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def benchmark(work: Path = RESULTS / "embedder_work", run: Path | None = None, train_data: Path | None = None,
              heldout: Path | None = None, b5: bool = True, b5_size: int = 456, rounds: int = 5,
              calibration_images: int = 64, b5_map5: bool = False, max_queries: int = 200,
              plot_path: Path | None = RESULTS / "embedder.png", lite2: bool = True) -> dict[str, Any]:
    work = Path(work)
    run = run if run is not None else (IQ_WORK / "run-lite0-synth-photo" if (IQ_WORK / "run-lite0-synth-photo").is_dir()
                                       else None)
    train_data = train_data or (IQ_WORK / "synth-photo" if (IQ_WORK / "synth-photo").is_dir() else None)
    large = work / "synth-textured-500"  # `whaleid synth DIR --individuals 500 --seed 41 --style textured`
    heldout = heldout or (large if (large / "train.csv").is_file() else
                          IQ_WORK / "synth-textured" if (IQ_WORK / "synth-textured").is_dir() else None)
    if train_data is None:
        train_data = work / "synth-photo"
        if not (train_data / "train.csv").is_file():
            from training.synth import generate

            generate(train_data, individuals=60, seed=1, style="photo")
    if heldout is None:
        heldout = work / "synth-textured"
        if not (heldout / "train.csv").is_file():
            from training.synth import generate

            generate(heldout, individuals=60, seed=23, style="textured")
    limit = sgemm_gflops()
    log.info("SGEMM: %.1f GFLOP/s", limit)
    result: dict[str, Any] = {"sgemm_gflops": round(limit, 1), "cpu_count": os.cpu_count(),
                              "load_average_1m": round(os.getloadavg()[0], 2), "train_data": str(train_data),
                              "heldout_data": str(heldout), "rounds": rounds, "models": {}}
    fp32, meta = default_model(work, run)
    calibration = quantize.calibration_crops(train_data, meta["image_size"], calibration_images,
                                             box_source=meta["eval_box_source"])
    result["models"]["lite0"] = bench_model("lite0", fp32, meta, calibration, heldout, limit, rounds, True,
                                            max_queries)
    general = IQ_WORK / "general"  # the general identifier (Lite2@384, ImageNet features, no training)
    if lite2 and (general / "checkpoints").is_dir():
        fp32, meta = default_model(work, general, "lite2")
        calibration = quantize.calibration_crops(train_data, meta["image_size"], calibration_images,
                                                 box_source=meta["eval_box_source"])
        result["models"]["lite2"] = bench_model("lite2", fp32, meta, calibration, heldout, limit, rounds, True,
                                                max_queries, ("int8", "int8_s8"))
    if b5:
        fp32, meta = b5_model(work, b5_size)
        calibration = quantize.calibration_crops(train_data, b5_size, min(calibration_images, 16),
                                                 box_source=meta["eval_box_source"])
        result["models"]["b5"] = bench_model("b5", fp32, meta, calibration, heldout, limit, max(1, rounds - 1),
                                             b5_map5, max_queries)
    result["sgemm_gflops_after"] = round(sgemm_gflops(), 1)
    if plot_path:
        result["plot"] = str(plot(result, Path(plot_path)))
    return result
