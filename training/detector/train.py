"""`whaleid detector train --out RUN`: fit the detector on synthetic scenes.

The backbone (pretrained EfficientNet-Lite0) stays frozen, so its feature maps are computed once per scene (and
per mirrored scene) and the head is fitted on them for many epochs: seconds to minutes on a CPU, and the
ImageNet features keep it robust to looks it never saw. Training scenes are indices 0..scenes-1 of
(seed, looks); validation scenes follow them (other poses, seas and animals of the same looks).

    RUN/detector.json          config + validation report (mean IoU, whole-frame IoU, presence accuracy)
    RUN/detector.weights.h5    the serving model's weights (backbone + head)
    RUN/history.csv            loss per epoch
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from services.core.errors import ConfigError
from training.detector.config import DetectorConfig
from training.detector.data import box_report, jittered, mirrored, scene_arrays, stack_scenes
from training.detector.model import build_backbone, build_head, detection_loss, serving_model
from training.synth.scenes import iter_scenes

log = logging.getLogger(__name__)

RUN_FILE, WEIGHTS_FILE, HISTORY_FILE = "detector.json", "detector.weights.h5", "history.csv"


def config_with(overrides: dict) -> DetectorConfig:
    known = DetectorConfig.__dataclass_fields__
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ConfigError(f"detector: unknown settings {', '.join(unknown)}; known: {', '.join(known)}")
    typed = {}
    for key, value in overrides.items():
        kind = type(getattr(DetectorConfig(), key))
        typed[key] = (str(value).lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    return replace(DetectorConfig(), **typed)


def render(config: DetectorConfig, count: int, start: int = 0, looks: str | None = None):
    scenes = iter_scenes(count, config.seed, config.image_size * 3 // 2 if config.image_size < 160 else 240,
                         looks or config.looks, config.individuals, start=start)
    return scene_arrays(scenes, config.image_size)


def predict(backbone, head, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (N, 4) normalised, scores (N,)) of the two-part model (the serving model's arithmetic)."""
    from training.detector.model import BoxDecode

    raw = head.predict(backbone.predict(images, batch_size=batch_size, verbose=0), batch_size=256, verbose=0)
    box, score = BoxDecode()(raw)
    return np.asarray(box, np.float32), np.asarray(score, np.float32).reshape(-1)


def train_detector(out_dir, config: DetectorConfig | None = None, verbose: int = 0) -> dict:
    import keras

    config = config or DetectorConfig()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    started = time.monotonic()
    train = render(config, config.scenes)
    validation = render(config, config.validation_scenes, start=config.scenes)
    if config.mirror:
        copies = mirrored(*train)
        if config.jitter:
            copies = (jittered(copies[0], config.seed), *copies[1:])
        train = stack_scenes([train, copies])
    rendered = time.monotonic()
    log.info("detector: %d training and %d validation scenes rendered at %d px (%.1f s)", len(train[0]),
             len(validation[0]), config.image_size, rendered - started)

    backbone = build_backbone(config)
    features = backbone.predict(train[0], batch_size=32, verbose=0)
    shapes = [list(f.shape[1:]) for f in features]
    featured = time.monotonic()
    log.info("detector: backbone features %s computed (%.1f s)", shapes, featured - rendered)

    head = build_head([f.shape[1:] for f in features], config)
    steps = max(1, int(np.ceil(len(train[0]) / config.batch_size))) * config.epochs
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps, alpha=0.05)
    head.compile(optimizer=keras.optimizers.Adam(schedule), loss=detection_loss)
    targets = np.concatenate([train[1], train[2][:, None]], axis=1).astype(np.float32)
    history = head.fit(features, targets, batch_size=config.batch_size, epochs=config.epochs, shuffle=True,
                       verbose=verbose)
    fitted = time.monotonic()

    model = serving_model(backbone, head)
    model.save_weights(out / WEIGHTS_FILE)
    boxes, scores = predict(backbone, head, validation[0])
    report = box_report(boxes, scores, validation[1], validation[2])
    losses = [float(v) for v in history.history["loss"]]
    (out / HISTORY_FILE).write_text("epoch,loss\n" + "".join(f"{i + 1},{v:.6f}\n" for i, v in enumerate(losses)))
    result = {"config": config.to_dict(), "validation": report, "final_loss": round(losses[-1], 5),
              "feature_shapes": shapes,
              "seconds": {"render": round(rendered - started, 1), "features": round(featured - rendered, 1),
                          "fit": round(fitted - featured, 1), "total": round(time.monotonic() - started, 1)}}
    (out / RUN_FILE).write_text(json.dumps(result, indent=2) + "\n")
    log.info("detector: validation mean IoU %.3f (whole frame %.3f), presence accuracy %.3f -> %s",
             report["mean_iou"] or 0.0, report["whole_frame_mean_iou"] or 0.0, report["presence_accuracy"], out)
    return result


def load_detector(run_dir):
    """(serving Keras model, its config) of a trained run."""
    run = Path(run_dir)
    try:
        record = json.loads((run / RUN_FILE).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{run} is not a detector run (no {RUN_FILE}; train one with `whaleid detector "
                          "train --out RUN`)") from None
    config = config_with(record["config"])
    backbone = build_backbone(replace(config, weights="none"))  # the trained weights follow
    shapes = [shape[1:] for shape in backbone.output_shape]
    model = serving_model(backbone, build_head(shapes, config))
    model.load_weights(run / WEIGHTS_FILE)
    return model, config
