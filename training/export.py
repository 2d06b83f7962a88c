"""Export trained snapshots for serving: SavedModel + ONNX + a manifest (docs/interfaces.md, "Export").

Per snapshot, into `OUT/<model_id>/`:
  saved_model/   `model.export(path, format="tf_saved_model")`
  model.onnx     tf2onnx on the SavedModel, opset 17 (what `python -m tf2onnx.convert --saved-model` does, run
                 in-process; the command line is the fallback), input "image" (float32 NHWC in [0, 255]),
                 output "embedding" (L2-normalised) and, when the run has a species head, a second output
                 "species" (softmax probabilities over the manifest's species names, Kaggle's misspellings
                 fixed as training.data does). Keras' own ONNX export writes a broken graph: not used.
  manifest.json  backbone, image size, preprocessing, embedding size, fold, epoch, sha256 of every file, the
                 species block (names, shape) and the parity figures: max |onnxruntime - Keras| on a batch for
                 each output, refused above the tolerance.
The export is written to a hidden staging folder and renamed into place only when everything passed, so a
failed export never leaves a half-written model behind.

`fp32_exports` (export_run, export_model): an exports directory that already holds the fp32 export of the
snapshot (a former `whaleid export`): its SavedModel and ONNX are copied (checksums checked against its manifest)
instead of written and converted again (~20 s of the ~23 s of an fp32 export of b0-tiny at 64 px), then checked
against this snapshot's Keras model like a fresh conversion (signature, parity), so an export of other weights is
refused. The way to an int8 or bf16 export of a snapshot already exported in fp32.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from services.core.checksums import sha256_file
from services.core.errors import WhaleIdError
from services.core.onnx_signature import INPUT_NAME, OUTPUT_NAME, SPECIES_OUTPUT, embedder_signature_problems

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
PARITY_BATCH = 8
CONVERT_TIMEOUT_S = 1800
MANIFEST = "manifest.json"


class ExportError(WhaleIdError):
    """An export could not be written or failed its parity check; the message names the model."""


def parity_batch(image_size: int, count: int = PARITY_BATCH, seed: int = 0) -> np.ndarray:
    """Deterministic float32 NHWC images in [0, 255]: smooth gradients plus noise, like real crops."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 255.0, image_size, dtype=np.float32)
    base = (ramp[None, :, None] + ramp[:, None, None]) / 2.0
    images = base[None] * rng.uniform(0.2, 1.0, (count, 1, 1, 3)) + rng.normal(0, 30, (count, image_size, image_size, 3))
    return np.clip(images, 0.0, 255.0).astype(np.float32)


def keras_outputs(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """{"embedding": ..., ["species": ...]} of a Keras export model (single output: the embedding)."""
    out = model(images, training=False)
    out = out if isinstance(out, dict) else {OUTPUT_NAME: out}
    return {name: np.asarray(value, dtype=np.float32) for name, value in out.items()}


def keras_embed(model, images: np.ndarray) -> np.ndarray:
    return keras_outputs(model, images)[OUTPUT_NAME]


def onnx_outputs(onnx_path: Path, images: np.ndarray, names: Sequence[str] = (OUTPUT_NAME,)) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(list(names), {INPUT_NAME: images}), strict=True))


def onnx_embed(onnx_path: Path, images: np.ndarray) -> np.ndarray:
    return onnx_outputs(onnx_path, images)[OUTPUT_NAME]


# ----------------------------------------------------------------------------- the species head
def has_species_output(model) -> bool:
    return isinstance(model.output, dict) and SPECIES_OUTPUT in model.output


def serving_species_names(names: Sequence[str]) -> tuple[list[str], np.ndarray | None]:
    """Kaggle's misspellings fixed (training.data.LABEL_FIXES) -> (unique names in first-seen order, the 0/1
    (len(names), len(unique)) matrix summing the columns of names that became one; None when none did)."""
    from training.data import LABEL_FIXES

    fixed = [LABEL_FIXES.get(str(n), str(n)) for n in names]
    unique = list(dict.fromkeys(fixed))
    if len(unique) == len(fixed):
        return unique, None
    merge = np.zeros((len(fixed), len(unique)), dtype=np.float32)
    merge[np.arange(len(fixed)), [unique.index(n) for n in fixed]] = 1.0
    return unique, merge


def serving_model(train_model, embedding_model, species: Sequence[str]):
    """(Keras model to export, species names of its `species` output). With a species head: outputs
    {"embedding", "species": softmax of the head on the normalised embedding}; without: the embedding model."""
    import keras

    if not species or "species" not in train_model.output_names:
        return embedding_model, []
    names, merge = serving_species_names(species)
    probabilities = keras.layers.Softmax(name="species_probabilities", dtype="float32")(
        train_model.get_layer("species").output)
    if merge is not None:
        layer = keras.layers.Dense(len(names), use_bias=False, trainable=False, name="species_merge", dtype="float32")
        probabilities = layer(probabilities)
        layer.set_weights([merge])
    model = keras.Model(embedding_model.input, {OUTPUT_NAME: embedding_model.output, SPECIES_OUTPUT: probabilities},
                        name="serving")
    return model, names


def load_serving_model(run_dir: Path, snapshot: str | None = None):
    """(export model, info) of one snapshot; info["species"] = the fixed names of its species output ([]: none)."""
    from training.embed import load_trained_models

    train_model, embedding_model, info = load_trained_models(run_dir, snapshot)
    model, names = serving_model(train_model, embedding_model, info.get("species") or [])
    return model, {**info, "species": names}


def write_saved_model(model, path: Path) -> None:
    try:
        model.export(str(path), format="tf_saved_model", verbose=False)
    except TypeError:  # Keras versions without `verbose`
        model.export(str(path), format="tf_saved_model")


def convert_to_onnx(saved_model: Path, onnx_path: Path, opset: int = DEFAULT_OPSET, species: bool = False) -> None:
    """tf2onnx on the SavedModel (the route measured to work, max diff ~1e-7): what
    `python -m tf2onnx.convert --saved-model DIR --opset 17 --rename-inputs image --rename-outputs embedding`
    does, run in this process (TensorFlow is already loaded); the command line is the fallback. With `species`
    the model has the dict outputs {"embedding", "species"}, whose names tf2onnx takes from the signature."""
    try:
        import tensorflow as tf
        from tf2onnx import tf_loader
        from tf2onnx.convert import _convert_common
    except ImportError:
        return convert_to_onnx_cli(saved_model, onnx_path, opset, species)
    try:
        graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
            str(saved_model), None, None, None, None, None, False,
            return_initialized_tables=True, return_tensors_to_rename=True)
        wanted = {OUTPUT_NAME, SPECIES_OUTPUT} if species else {OUTPUT_NAME}
        if len(inputs) != 1 or len(outputs) != len(wanted):
            raise ExportError(f"{saved_model}: expected one input and outputs {sorted(wanted)}, got {inputs} -> "
                              f"{outputs}")
        renames[inputs[0]] = INPUT_NAME
        if species:
            if {renames.get(o) for o in outputs} != wanted:
                raise ExportError(f"{saved_model}: the signature's outputs are {[renames.get(o) for o in outputs]}, "
                                  f"expected {sorted(wanted)}")
        else:
            renames[outputs[0]] = OUTPUT_NAME
        with tf.device("/cpu:0"):
            _convert_common(graph_def, name=str(saved_model), opset=opset, input_names=inputs, output_names=outputs,
                            tensors_to_rename=renames, initialized_tables=tables, output_path=str(onnx_path))
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises many kinds on unsupported graphs
        raise ExportError(f"tf2onnx failed on {saved_model}: {type(exc).__name__}: {exc}") from None


def convert_to_onnx_cli(saved_model: Path, onnx_path: Path, opset: int = DEFAULT_OPSET, species: bool = False) -> None:
    """The same conversion through tf2onnx's command line (a separate process); two outputs keep the names of
    the signature (embedding, species)."""
    argv = [
        sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model), "--opset", str(opset),
        "--output", str(onnx_path), "--rename-inputs", INPUT_NAME,
        *([] if species else ["--rename-outputs", OUTPUT_NAME]),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ExportError(f"tf2onnx did not finish within {CONVERT_TIMEOUT_S} s for {saved_model}") from None
    if done.returncode != 0 or not onnx_path.exists():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise ExportError(f"tf2onnx failed on {saved_model} (exit {done.returncode}):\n{tail}")


def copy_fp32_export(fp32_exports: Path, model_id: str, staging: Path) -> None:
    """`fp32_exports/<model_id>/`'s saved_model/ and model.onnx copied into `staging`, once its manifest says fp32
    and every copied file has the checksum that manifest records; an ExportError otherwise."""
    source = Path(fp32_exports) / model_id
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{model_id}: no readable fp32 export to reuse in {fp32_exports} ({exc})") from None
    if manifest.get("model_id") != model_id or manifest.get("precision", "fp32") != "fp32":
        raise ExportError(f"{model_id}: {source} is the export of {manifest.get('model_id')!r} in "
                          f"{manifest.get('precision')!r}, not an fp32 export of {model_id}; nothing reused")
    files = {name: checksum for name, checksum in dict(manifest.get("files") or {}).items()
             if name == "model.onnx" or name.startswith("saved_model/")}
    if "model.onnx" not in files or not any(name.startswith("saved_model/") for name in files):
        raise ExportError(f"{model_id}: the manifest of {source} lists no model.onnx and saved_model/; nothing reused")
    for name, checksum in files.items():
        if not (source / name).is_file() or sha256_file(source / name) != checksum:
            raise ExportError(f"{model_id}: {source / name} is missing or differs from the checksum in its manifest; "
                              "nothing reused")
    shutil.copytree(source / "saved_model", staging / "saved_model")
    shutil.copy2(source / "model.onnx", staging / "model.onnx")


def check_onnx_signature(onnx_path: Path, model_id: str, image_size: int, embedding_size: int,
                         species_count: int = 0) -> None:
    """The ONNX file has exactly input `image` [?, S, S, 3] and output `embedding` [?, D] (+ `species` [?, K])."""
    problems = embedder_signature_problems(onnx_path, image_size, embedding_size, species_count)
    if problems:
        raise ExportError(f"{model_id}: the converted ONNX model is not servable: {'; '.join(problems)}")


def check_parity(model, onnx_path: Path, images: np.ndarray, tolerance: float, model_id: str) -> float:
    """max |onnxruntime - Keras| over the batch; an ExportError above `tolerance`."""
    parity = float(np.max(np.abs(onnx_embed(onnx_path, images) - keras_embed(model, images))))
    if not parity <= tolerance:
        raise ExportError(f"{model_id}: ONNX embeddings differ from Keras by {parity:.3g} "
                          f"(> tolerance {tolerance:g}) on a batch of {len(images)}; export refused")
    log.info("%s: parity max |onnx - keras| = %.2g on %d images (tolerance %g)", model_id, parity,
             len(images), tolerance)
    return parity


def check_species_parity(model, onnx_path: Path, images: np.ndarray, tolerance: float, model_id: str) -> float:
    """max |onnxruntime - Keras| of the species probabilities; an ExportError above `tolerance`."""
    served = onnx_outputs(onnx_path, images, (SPECIES_OUTPUT,))[SPECIES_OUTPUT]
    parity = float(np.max(np.abs(served - keras_outputs(model, images)[SPECIES_OUTPUT])))
    if not parity <= tolerance:
        raise ExportError(f"{model_id}: ONNX species probabilities differ from Keras by {parity:.3g} "
                          f"(> tolerance {tolerance:g}) on a batch of {len(images)}; export refused")
    log.info("%s: species parity max |onnx - keras| = %.2g", model_id, parity)
    return parity


def build_manifest(info: Mapping[str, Any], files: Mapping[str, str], parity: float, run: str,
                   species_parity: float | None = None, precision: str = "fp32",
                   reduced: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of docs/interfaces.md; a `species` block when info["species"] names a species output;
    `precision` (fp32|bf16|int8) and, for a reduced precision, `reduced_precision` (how it was made, its
    identification parity against fp32)."""
    size, dim = int(info["image_size"]), int(info["embedding_size"])
    species = list(info.get("species") or [])
    manifest = {
        "model_id": info["model_id"],
        "backbone": info["backbone"],
        "image_size": size,
        "embedding_size": dim,
        "fold": info.get("fold"),
        "epoch": info.get("epoch"),
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [-1, size, size, 3], "layout": "NHWC",
                  "range": [0, 255]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [-1, dim], "l2_normalised": True},
        **({"species": {"name": SPECIES_OUTPUT, "dtype": "float32", "shape": [-1, len(species)],
                        "probabilities": True, "names": species, "parity_max_abs_diff": species_parity}}
           if species else {}),
        "preprocessing": {"resize": "pillow-bilinear", "eval_box_source": info.get("eval_box_source") or ""},
        "files": dict(files),
        "parity_max_abs_diff": float(parity),
        "precision": precision,
        **({"reduced_precision": dict(reduced)} if reduced else {}),
        "run": run,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return manifest


def export_model(
    model,
    info: Mapping[str, Any],
    out_dir: Path,
    *,
    run: str = "",
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    parity_images: np.ndarray | None = None,
    precision: str = "fp32",
    data: Path | None = None,
    calibration_images: int = 64,
    map5_tolerance: float = 0.005,
    fp32_leading_convs: int | None = None,
    fp32_exports: Path | None = None,
) -> Path:
    """Export one Keras embedding model (or a `serving_model` with a species output) to `out_dir/<model_id>/`;
    returns that folder. `precision` bf16|int8 (training.quantize) converts the parity-checked fp32 ONNX and
    needs `data` (a labelled data set: training crops calibrate int8, and MAP@5 of the reduced model against
    fp32 on its gallery/queries must not drop by more than `map5_tolerance`). `fp32_exports`: an exports
    directory holding this model's fp32 export, whose SavedModel and ONNX are reused (copy_fp32_export) instead
    of converted again (at the opset it was converted with); the parity check against `model` still runs."""
    from training.quantize import PRECISIONS

    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and data is None:
        raise ExportError(f"--precision {precision} needs --data DIR (a labelled data set: training crops to "
                          "calibrate, and a gallery + queries for the MAP@5 parity against fp32)")
    model_id = str(info["model_id"])
    size, dim = int(info["image_size"]), int(info["embedding_size"])
    species = list(info.get("species") or []) if has_species_output(model) else []
    info = {**info, "species": species}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / model_id
    staging = out_dir / f".{model_id}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        started = time.perf_counter()
        if fp32_exports is not None:
            copy_fp32_export(Path(fp32_exports), model_id, staging)
            log.info("%s: SavedModel and ONNX of the fp32 export in %s reused (%.1f s)", model_id, fp32_exports,
                     time.perf_counter() - started)
        else:
            write_saved_model(model, staging / "saved_model")
            log.info("%s: SavedModel written (%.1f s)", model_id, time.perf_counter() - started)
            started = time.perf_counter()
            convert_to_onnx(staging / "saved_model", staging / "model.onnx", opset, species=bool(species))
            log.info("%s: ONNX (opset %d) written (%.1f s)", model_id, opset, time.perf_counter() - started)
        check_onnx_signature(staging / "model.onnx", model_id, size, dim, len(species))

        images = parity_batch(size) if parity_images is None else np.asarray(parity_images, dtype=np.float32)
        parity = check_parity(model, staging / "model.onnx", images, tolerance, model_id)
        species_parity = (check_species_parity(model, staging / "model.onnx", images, tolerance, model_id)
                          if species else None)

        reduced = (reduce_precision(staging / "model.onnx", precision, Path(data), info, calibration_images,
                                    map5_tolerance, len(species), fp32_leading_convs)
                   if precision != "fp32" else None)

        files = {str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        manifest = build_manifest(info, files, parity, run, species_parity, precision, reduced)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def reduce_precision(onnx_path: Path, precision: str, data: Path, info: Mapping[str, Any], calibration_images: int,
                     map5_tolerance: float, species_count: int = 0,
                     fp32_leading_convs: int | None = None) -> dict[str, Any]:
    """Replace the fp32 `onnx_path` by its `precision` version (training.quantize) once its identification parity
    holds: MAP@5 on `data`'s gallery/queries within `map5_tolerance` of fp32 (cross-fitted thresholds, and at the
    fp32 model's threshold); returns the manifest's `reduced_precision` block. An ExportError otherwise."""
    from training import quantize

    model_id, size = str(info["model_id"]), int(info["image_size"])
    box_source = info.get("eval_box_source") or "fullbody"
    reduced_path = onnx_path.with_name(f"model.{precision}.onnx")
    if precision == "int8":
        crops = quantize.calibration_crops(data, size, calibration_images, box_source=box_source)
        leading = quantize.DEFAULT_FP32_LEADING_CONVS if fp32_leading_convs is None else fp32_leading_convs
        how = quantize.quantize_int8(onnx_path, reduced_path, crops, fp32_leading_convs=leading)
        how["calibration_data"] = str(data)
    else:
        how = quantize.bf16_weights(onnx_path, reduced_path)
    check_onnx_signature(reduced_path, model_id, size, int(info["embedding_size"]), species_count)
    parity_set = quantize.ParitySet(data, size, box_source)
    scores = quantize.identification_scores(parity_set, {"fp32": onnx_path, precision: reduced_path})
    agreement = quantize.embedding_agreement(quantize.embed_crops(onnx_path, parity_set.query_crops),
                                             quantize.embed_crops(reduced_path, parity_set.query_crops))
    loss = round(scores["fp32"]["map5"] - scores[precision]["map5"], 4)
    loss_deployed = round(scores["fp32"]["map5_at_reference_threshold"]
                          - scores[precision]["map5_at_reference_threshold"], 4)
    block = {**how, "identification_parity": {"data": str(data), "fp32": scores["fp32"], precision: scores[precision],
                                              "map5_loss": loss, "map5_loss_at_fp32_threshold": loss_deployed,
                                              "tolerance": map5_tolerance},
             "embedding_vs_fp32": agreement}
    log.info("%s: %s MAP@5 %.4f vs fp32 %.4f (loss %.4f, at the fp32 threshold %.4f; tolerance %g), embeddings "
             "vs fp32: mean cosine %.4f", model_id, precision, scores[precision]["map5"], scores["fp32"]["map5"],
             loss, loss_deployed, map5_tolerance, agreement["mean_cosine"])
    if not max(loss, loss_deployed) <= map5_tolerance:
        raise ExportError(f"{model_id}: {precision} loses {max(loss, loss_deployed):.4f} MAP@5 against fp32 on {data} "
                          f"(> tolerance {map5_tolerance:g}; fp32 {scores['fp32']['map5']:.4f}, {precision} "
                          f"{scores[precision]['map5']:.4f}); export refused")
    reduced_path.replace(onnx_path)
    return block


def snapshot_spec(name: str) -> str:
    """`epoch_003` (as listed by the CLI) -> the checkpoint file name training.embed resolves."""
    return f"{name}.weights.h5" if name.startswith("epoch_") and not name.endswith(".h5") else name


def export_run(
    run_dir: Path,
    out_dir: Path,
    snapshots: Sequence[str] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    **reduced: Any,
) -> list[Path]:
    """Export the chosen snapshots of a training run (default: the last one; ["all"]: every one).
    Snapshot names: epoch_003, 3, epoch_003.weights.h5 or a checkpoint path. `reduced`: precision, data,
    calibration_images, map5_tolerance, fp32_leading_convs, fp32_exports (export_model)."""
    from training.embed import list_checkpoints

    run_dir = Path(run_dir)
    if not snapshots:
        chosen: list[str | None] = [None]
    elif list(snapshots) == ["all"]:
        chosen = [str(epoch) for epoch in list_checkpoints(run_dir)]
        if not chosen:
            raise ExportError(f"{run_dir} has no snapshots in {run_dir}/checkpoints")
    else:
        chosen = [snapshot_spec(str(s)) for s in snapshots]

    exported = []
    for index, snapshot in enumerate(chosen, 1):
        log.info("[%d/%d] exporting snapshot %s of %s", index, len(chosen), snapshot or "last", run_dir)
        model, info = load_serving_model(run_dir, snapshot)
        exported.append(export_model(model, info, out_dir, run=str(run_dir.resolve()), opset=opset,
                                     tolerance=tolerance, **reduced))
        log.info("[%d/%d] %s -> %s", index, len(chosen), info["model_id"], exported[-1])
    return exported
