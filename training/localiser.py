"""The label-free localiser (issue 21 item 4): a crop box from the class activation map (CAM) of the pretrained
EfficientNet-Lite's top ImageNet class, no box labels and no training.

The network (`build_cam_model`): the backbone with its ImageNet classifier; the photo's top class (argmax of the
1000 logits) picks that class's classifier weights, and its map is the last feature map weighted by them
(N, g, g). The top class, not a fixed list of sea classes, so it works for any animal (nyala photos are mostly
ImageNet's impala; whale photos grey or killer whale). The box arithmetic is services.core.localisation
(`cam_box`), shared with the Triton `detector` that serves this network (`export_cam`,
`whaleid model-repo build --detector cam`), so the offline crop (evaluate, predict, gallery build: the
`localiser: cam` setting, training.embed.Embedder) and the worker's crop are the same box.

A photo gets the CAM box when its score (the share of the map's mass in the box) is at least MIN_SCORE, the
worker's DETECTOR_MIN_SCORE; otherwise the whole frame.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from services.core import imaging
from services.core.checksums import sha256_file
from services.core.errors import ConfigError
from services.core.localisation import CAM_FRACTION, CAM_MARGIN, MIN_SCORE, cam_box
from services.core.staging import staged_folder

CAM_BACKBONE, CAM_SIZE = "EfficientNetLite2", 384
INPUT, CAM_OUTPUT = "image", "cam"
MANIFEST, ONNX_FILE, LOG_FILE = "detector.json", "model.onnx", "export.log"
LOCALISER = "cam"
DEFAULT_EXPORT = Path("runs") / "cam-detector"
EXPORT_ENV = "WHALEID_CAM_DETECTOR"
PARITY_TOLERANCE = 1e-3  # |onnx - keras| of the maps, relative to each map's maximum


def build_cam_model(backbone: str = CAM_BACKBONE, size: int = CAM_SIZE):
    """image float32 (N, S, S, 3) in [0, 255] -> the top class's activation map (N, g, g)."""
    import keras
    from keras import ops

    from training.backbones.efficientnet_lite import efficientnet_lite

    network = efficientnet_lite(backbone, (size, size, 3), weights="imagenet", include_top=True)
    kernel = network.get_layer("fc").get_weights()[0]  # (channels, 1000)

    class ClassActivationMap(keras.layers.Layer):
        """(feature map (N, g, g, C), logits (N, K)) -> the map of each photo's top class (N, g, g)."""

        def build(self, input_shape):
            self.classifier = self.add_weight(shape=kernel.shape, initializer=keras.initializers.Constant(kernel),
                                              trainable=False, name="classifier")

        def call(self, inputs):
            features, logits = inputs
            # the top class as a one-hot row (max, not argmax + gather: those export as ops ONNX lacks)
            top = ops.cast(ops.equal(logits, ops.max(logits, axis=-1, keepdims=True)), "float32")
            weights = ops.matmul(top, ops.transpose(self.classifier))  # (N, C): the top class's weights
            return ops.einsum("nhwc,nc->nhw", features, weights)

    features = network.get_layer("conv_head_relu6").output
    cam = ClassActivationMap(name=CAM_OUTPUT)([features, network.output])
    return keras.Model(network.input, cam, name=f"cam_{backbone.lower()}_{size}")


class CamLocaliser:
    """Crop boxes of uint8 photos from the CAM of the top ImageNet class (module docstring)."""

    def __init__(self, backbone: str = CAM_BACKBONE, size: int = CAM_SIZE, fraction: float = CAM_FRACTION,
                 margin: float = CAM_MARGIN, min_score: float = MIN_SCORE):
        self.backbone, self.size = backbone, int(size)
        self.fraction, self.margin, self.min_score = float(fraction), float(margin), float(min_score)
        self.model = build_cam_model(backbone, self.size)
        self.name = f"cam-{backbone}@{self.size}"

    def maps(self, images: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        out = [np.asarray(self.model(np.stack([imaging.resize_for_model(i, self.size)
                                               for i in images[start:start + batch_size]]), training=False))
               for start in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 1, 1), np.float32)

    def boxes(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, float]]:
        """(normalised box, score) per photo."""
        return [cam_box(m, self.fraction, self.margin) for m in self.maps(images)]

    def crop_boxes(self, images: Sequence[np.ndarray]) -> list[list[float] | None]:
        """The crop of each photo in pixels (x0 y0 x1 y1, rounded outwards by imaging.crop as the worker's
        detector box is): its CAM box when the score is at least min_score, else None (the whole frame)."""
        return [(box.astype(np.float64) * [image.shape[1], image.shape[0], image.shape[1], image.shape[0]]).tolist()
                if score >= self.min_score else None
                for image, (box, score) in zip(images, self.boxes(images), strict=True)]


def localiser_for(config) -> CamLocaliser | None:
    """The localiser a model's config asks for (`localiser: none | cam`)."""
    kind = str(config.get("localiser") or "none")
    if kind == "none":
        return None
    if kind != LOCALISER:
        raise ConfigError(f"localiser: {kind!r} is not one of none, {LOCALISER}")
    return CamLocaliser()


# ----------------------------------------------------------------------------- the Triton `detector` export
def default_export_dir() -> Path:
    return Path(os.environ.get(EXPORT_ENV) or DEFAULT_EXPORT)


def _convert(model, onnx_path: Path, size: int, opset: int = 17) -> None:
    import tensorflow as tf

    from training.onnx_conversion import save_onnx

    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name=INPUT),)

    @tf.function(input_signature=spec)
    def localise(image):
        return tf.identity(model(image, training=False), name=CAM_OUTPUT)

    save_onnx(localise, spec, onnx_path, INPUT, [CAM_OUTPUT], opset)


def parity_images(size: int, count: int = 6, seed: int = 0) -> np.ndarray:
    """Generated photos (a bright blob on a textured background), model-sized, for the export's parity check."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(count):
        cx, cy, r = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.08, 0.25)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        background = rng.uniform(40, 120, 3) + rng.normal(0, 12, (size, size, 3))
        out.append(np.clip(background * (1 - blob) + rng.uniform(150, 255, 3) * blob, 0, 255))
    return np.stack(out).astype(np.float32)


def export_cam(out_dir: str | Path | None = None, backbone: str = CAM_BACKBONE, size: int = CAM_SIZE,
               opset: int = 17) -> Path:
    """OUT/model.onnx (input `image` float32 (N, S, S, 3) in [0, 255] -> output `cam` (N, g, g)) and
    OUT/detector.json (kind `detector`, localiser `cam`, the box settings); parity-checked against Keras.
    TensorFlow and tf2onnx output goes to OUT.export.log. Returns OUT."""
    import onnxruntime as ort

    from training.detector.export import DetectorExportError, output_to

    out = Path(out_dir) if out_dir else default_export_dir()
    started = time.perf_counter()
    model = build_cam_model(backbone, size)
    with staged_folder(out) as staging:
        with output_to(out.parent / f"{out.name}.{LOG_FILE}"):
            _convert(model, staging / ONNX_FILE, size, opset)
        images = parity_images(size)
        session = ort.InferenceSession(str(staging / ONNX_FILE), providers=["CPUExecutionProvider"])
        served = session.run([CAM_OUTPUT], {INPUT: images})[0]
        reference = np.asarray(model(images, training=False))
        scale = np.maximum(np.abs(reference).max(axis=(1, 2), keepdims=True), 1e-6)
        parity = float(np.max(np.abs(served - reference) / scale))
        if not parity <= PARITY_TOLERANCE:
            raise DetectorExportError(f"CAM localiser: ONNX maps differ from Keras by {parity:.3g} of their maximum "
                                      f"(> {PARITY_TOLERANCE:g}); export refused")
        grid = int(reference.shape[1])
        manifest = {
            "kind": "detector", "localiser": LOCALISER, "backbone": backbone, "image_size": size, "grid": grid,
            "fraction": CAM_FRACTION, "margin": CAM_MARGIN, "min_score": MIN_SCORE,
            "input": {"name": INPUT, "dtype": "float32", "shape": [-1, size, size, 3], "layout": "NHWC",
                      "range": [0, 255], "resize": "pillow-bilinear, whole photo, aspect ratio not kept"},
            "outputs": {CAM_OUTPUT: {"shape": [-1, grid, grid],
                                     "meaning": "class activation map of the photo's top ImageNet class"}},
            "files": {ONNX_FILE: sha256_file(staging / ONNX_FILE)},
            "parity_max_rel_diff": parity,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"exported the CAM localiser {backbone}@{size} to {out} ({time.perf_counter() - started:.0f} s)",
          flush=True)
    return out


def cam_export(out_dir: str | Path | None = None) -> Path:
    """The CAM localiser's export (`--detector cam`), written on first use to runs/cam-detector (or
    $WHALEID_CAM_DETECTOR)."""
    out = Path(out_dir) if out_dir else default_export_dir()
    manifest = out / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("localiser") == LOCALISER:
        return out
    return export_cam(out)
