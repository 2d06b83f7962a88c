"""Training speed and what training buys, measured side by side in one run.

1. Training images/s (one optimizer step of the real train model: Elastic ArcFace + species head, Adam) for
   EfficientNetB0 at 128 px (batch 16) and EfficientNetB5 at 256 px (batch 4), on whatever device TensorFlow
   sees (CPU here; a GPU when present). The first step (graph trace) is timed separately.
2. Held-out MAP@5 on the synthetic set of training/tiny_recipe.py: raw-pixel and colour-histogram
   nearest-neighbour baselines vs the untrained and the trained b0-tiny embedder (gallery = train images,
   queries = test images; `map5`: new_individual never first; `map5_tuned`: best threshold on the queries).

`python -m bench training [--skip-speed] [--skip-map] [--steps N] [--work DIR]`
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SPEED_CASES = (("EfficientNetB0", 128, 16), ("EfficientNetB5", 256, 4))


def training_speed(backbone: str, size: int, batch: int, steps: int) -> dict:
    import keras
    import tensorflow as tf

    from training.config import load_config
    from training.model import build_models

    config = load_config("default", {"backbone": backbone, "image_size": size, "weights": "none"})
    train_model, _ = build_models(config, num_classes=100, num_species=5)
    train_model.compile(optimizer=keras.optimizers.Adam(1e-4),
                        loss={"arcface": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                              "species": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
    rng = np.random.default_rng(0)
    x = {"image": rng.uniform(0, 255, (batch, size, size, 3)).astype("float32"),
         "label": rng.integers(0, 100, batch).astype("int32")}
    y = {"arcface": x["label"], "species": rng.integers(0, 5, batch).astype("int32")}
    start = time.perf_counter()
    train_model.train_on_batch(x, y)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        train_model.train_on_batch(x, y)
    seconds = time.perf_counter() - start
    result = {"backbone": backbone, "image_size": size, "batch": batch, "steps": steps,
              "first_step_s": round(first, 1), "images_per_s": round(steps * batch / seconds, 2),
              "device": "GPU" if tf.config.list_logical_devices("GPU") else "CPU"}
    log.info("training speed: %s", result)
    keras.backend.clear_session()
    return result


def map5_comparison(work: Path) -> dict:
    from training.baseline import pixel_baseline_map5
    from training.config import load_config
    from training.data import load_dataset
    from training.embed import Embedder, heldout_map5, untrained_embedder
    from training.synth import generate
    from training.tiny_recipe import SYNTH, TRAIN_CONFIG, TRAIN_OVERRIDES
    from training.train import train

    data_dir, run_dir = work / "data", work / "run"
    generate(data_dir, **SYNTH)
    config = load_config(TRAIN_CONFIG, TRAIN_OVERRIDES)
    start = time.perf_counter()
    summary = train(config, data_dir, run_dir, verbose=0)
    train_s = time.perf_counter() - start
    data = load_dataset(data_dir)
    baseline = pixel_baseline_map5(data_dir, config["eval_box_source"])
    trained = heldout_map5(Embedder.from_run(run_dir), data)
    untrained = heldout_map5(untrained_embedder(config), data)
    pick = ("map5", "map5_tuned")
    return {
        "data": {"train_images": len(data.train), "test_queries": len(data.truth or [])},
        "train_seconds": round(train_s, 1), "val_map5_last_epoch": summary["val_map5"],
        "pixel_baseline": {k: baseline["pixel"][k] for k in pick},
        "histogram_baseline": {k: baseline["histogram"][k] for k in pick},
        "untrained_b0_tiny": {k: untrained[k] for k in pick},
        "trained_b0_tiny": {k: trained[k] for k in pick},
        "trained_over_pixel": round(trained["map5"] / max(baseline["pixel"]["map5"], 1e-9), 2),
        "trained_over_untrained": round(trained["map5"] / max(untrained["map5"], 1e-9), 2),
    }


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench training")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-map", action="store_true")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per speed case (after the first)")
    parser.add_argument("--work", default=None, help="directory for the synthetic set and run (default: temp)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result: dict = {}
    if not args.skip_speed:
        result["speed"] = [training_speed(b, s, n, args.steps) for b, s, n in SPEED_CASES]
        b0, b5 = result["speed"]
        result["b0_over_b5_images_per_s"] = round(b0["images_per_s"] / b5["images_per_s"], 1)
    if not args.skip_map:
        if args.work:
            result["map5"] = map5_comparison(Path(args.work))
        else:
            with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
                result["map5"] = map5_comparison(Path(tmp))
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(main(sys.argv[1:]), indent=2))
