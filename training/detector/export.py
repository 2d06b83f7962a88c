"""`whaleid detector export RUN [--out DIR]`: the trained detector as ONNX, parity-checked, with its manifest.

    OUT/model.onnx      input `image` float32 [N, S, S, 3] in [0, 255]; outputs `box` [N, 4] (normalised
                        x0 y0 x1 y1) and `score` [N, 1]
    OUT/detector.json   kind "detector", backbone, image size, input/outputs, sha256, parity, the run's
                        validation figures

tf2onnx converts the Keras model in this process (tf2onnx.convert.from_function, opset 17); what TensorFlow and
tf2onnx print (C++ warnings on file descriptor 2, their Python loggers) goes to `LOG_FILE` in the output folder,
not to the console. The ONNX outputs must match Keras within `tolerance` on a batch of scenes, else the export
is refused. Written to a staging folder and renamed into place only when everything passed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from services.core.checksums import sha256_file
from services.core.errors import WhaleIdError
from services.core.staging import staged_folder
from training.detector.model import BOX_OUTPUT, INPUT, SCORE_OUTPUT

log = logging.getLogger(__name__)

MANIFEST, ONNX_FILE, LOG_FILE = "detector.json", "model.onnx", "export.log"
DEFAULT_TOLERANCE = 1e-4
QUIET_LOGGERS = ("tf2onnx", "tensorflow", "absl", "h5py")


class DetectorExportError(WhaleIdError):
    """The detector could not be exported or failed its parity check."""


@contextlib.contextmanager
def output_to(log_path: Path):
    """Send file descriptor 2 and the TensorFlow / tf2onnx Python loggers to `log_path` for the block."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as sink:
        handler = logging.StreamHandler(open(log_path, "a", encoding="utf-8"))  # noqa: SIM115 - closed below
        saved_loggers = []
        for name in QUIET_LOGGERS:
            logger = logging.getLogger(name)
            saved_loggers.append((logger, logger.propagate, list(logger.handlers)))
            logger.handlers = [handler]
            logger.propagate = False
        sys.stderr.flush()
        saved_fd = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            for logger, propagate, handlers in saved_loggers:
                logger.handlers, logger.propagate = handlers, propagate
            handler.close()


def convert(model, onnx_path: Path, image_size: int, opset: int = 17) -> None:
    """Keras detector -> ONNX with input `image` and outputs `box`, `score` (names fixed after conversion)."""
    import tensorflow as tf

    from training.onnx_conversion import save_onnx

    spec = (tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=INPUT),)

    @tf.function(input_signature=spec)
    def detect(image):
        out = model(image, training=False)
        return tf.identity(out[BOX_OUTPUT], name=BOX_OUTPUT), tf.identity(out[SCORE_OUTPUT], name=SCORE_OUTPUT)

    save_onnx(detect, spec, onnx_path, INPUT, [BOX_OUTPUT, SCORE_OUTPUT], opset)


def onnx_detect(onnx_path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    box, score = session.run([BOX_OUTPUT, SCORE_OUTPUT], {INPUT: images.astype(np.float32)})
    return box, score


def export_detector(run_dir, out_dir=None, *, opset: int = 17, tolerance: float = DEFAULT_TOLERANCE) -> Path:
    """Export a detector run to `out_dir` (default RUN/export); returns that folder."""
    from training.detector.data import scene_arrays
    from training.detector.train import RUN_FILE, load_detector
    from training.synth.scenes import iter_scenes

    run = Path(run_dir)
    out = Path(out_dir) if out_dir else run / "export"
    started = time.perf_counter()
    model, config = load_detector(run)
    size = config.image_size
    with staged_folder(out) as staging:
        with output_to(out.parent / f"{out.name}.{LOG_FILE}"):
            convert(model, staging / ONNX_FILE, size, opset)
        images = scene_arrays(iter_scenes(8, config.seed + 7, max(size, 96), "photo,textured"), size)[0]
        served_box, served_score = onnx_detect(staging / ONNX_FILE, images)
        keras_out = model(images, training=False)
        parity = max(float(np.max(np.abs(served_box - np.asarray(keras_out[BOX_OUTPUT])))),
                     float(np.max(np.abs(served_score - np.asarray(keras_out[SCORE_OUTPUT])))))
        if not parity <= tolerance:
            raise DetectorExportError(f"detector {run}: ONNX outputs differ from Keras by {parity:.3g} (> tolerance "
                                      f"{tolerance:g}); export refused")
        record = json.loads((run / RUN_FILE).read_text())
        manifest = {
            "kind": "detector",
            "backbone": config.backbone,
            "image_size": size,
            "input": {"name": INPUT, "dtype": "float32", "shape": [-1, size, size, 3], "layout": "NHWC",
                      "range": [0, 255], "resize": "pillow-bilinear, whole photo, aspect ratio not kept"},
            "outputs": {BOX_OUTPUT: {"shape": [-1, 4], "meaning": "x0 y0 x1 y1, normalised to the photo"},
                        SCORE_OUTPUT: {"shape": [-1, 1], "meaning": "probability that the photo shows an animal"}},
            "files": {ONNX_FILE: sha256_file(staging / ONNX_FILE)},
            "parity_max_abs_diff": parity,
            "validation": record.get("validation"),
            "looks": config.looks,
            "run": str(run.resolve()),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("detector: exported %s -> %s (parity %.2g, %.1f s)", run, out, parity, time.perf_counter() - started)
    return out
