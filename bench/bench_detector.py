"""The crop detector against the truth, on a look it never saw (issue #15 item 2).

1. Box quality: a detector trained on scenes of the training looks (photo, grey, overcast; or `--run` an existing
   detector run) is exported to ONNX and run as served (services.core.imaging's resize of the whole photo, onnxruntime)
   on fresh scenes of the held-out look (`textured`: procedural sea, camera effects) and, for reference, of the
   training looks. Mean IoU with the main animal's true box, share with IoU >= 0.5, presence accuracy, against the
   trivial whole-frame box; `served_mean_iou` is what the worker crops (the box from score 0.5, else the photo).
2. Identification: single-animal scenes of `--individuals` individuals; the gallery is their training-look scenes
   cropped with the true box, the queries their held-out-look scenes cropped three ways: the true box, the
   detector's box (the whole photo where its score is below 0.5, as the worker does), the whole photo. MAP@5 of
   each through the identification core (services.core.identification: Gallery, rank_candidates, map_at_5). The
   embedder: an identification export (`--embedder EXPORT_DIR` with model.onnx + manifest.json), else the
   pretrained EfficientNet-Lite0 (ImageNet weights, average-pooled 1280-d features) that the identification model
   starts from. Every query is a known individual (no new_individual).

`python -m bench detector` (small defaults); `python -m bench.bench_detector --help` for the sizes.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.detector")


def _detect(onnx_path: Path, image_size: int, photos: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(normalised boxes (N, 4), scores (N,)) as the served model computes them."""
    import onnxruntime as ort

    from services.core.imaging import resize_for_model

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    boxes, scores = [], []
    for start in range(0, len(photos), 32):
        batch = np.stack([resize_for_model(p, image_size) for p in photos[start:start + 32]])
        box, score = session.run(["box", "score"], {"image": batch})
        boxes.append(box)
        scores.append(score.reshape(-1))
    return np.concatenate(boxes), np.concatenate(scores)


def _box_quality(onnx_path: Path, image_size: int, scenes) -> dict:
    from training.detector.data import box_report, normalised

    photos = [np.asarray(s.image.convert("RGB")) for s in scenes]
    truth = np.stack([normalised(s.main_box, *s.image.size) if s.main_box else np.zeros(4, np.float32)
                      for s in scenes])
    present = np.asarray([1.0 if s.main_box else 0.0 for s in scenes], np.float32)
    started = time.perf_counter()
    boxes, scores = _detect(onnx_path, image_size, photos)
    report = box_report(boxes, scores, truth, present)
    report["ms_per_photo"] = round(1000 * (time.perf_counter() - started) / len(photos), 2)
    return report


class _Embedder:
    """An identification export (model.onnx, manifest.json) or the pretrained Lite0 features."""

    def __init__(self, export: Path | None):
        if export is not None:
            import onnxruntime as ort

            manifest = json.loads((Path(export) / "manifest.json").read_text())
            self.size = int(manifest["image_size"])
            self.session = ort.InferenceSession(str(Path(export) / "model.onnx"), providers=["CPUExecutionProvider"])
            self.name = f"export {manifest['model_id']}"
            self.model = None
        else:
            import keras

            from training.backbones.efficientnet_lite import efficientnet_lite

            self.size = 224
            network = efficientnet_lite("EfficientNetLite0", (224, 224, 3), weights="imagenet")
            self.model = keras.Model(network.input, keras.layers.GlobalAveragePooling2D()(network.output))
            self.name = "pretrained EfficientNet-Lite0 (ImageNet), average-pooled features"

    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        from services.core.imaging import resize_for_model

        batch = np.stack([resize_for_model(c, self.size) for c in crops])
        if self.model is None:
            return self.session.run(["embedding"], {"image": batch})[0]
        return np.asarray(self.model.predict(batch, batch_size=32, verbose=0), np.float32)


def _crop(photo: np.ndarray, box) -> np.ndarray:
    from services.core.imaging import crop

    return photo if box is None else crop(photo, box)


def _identification(onnx_path: Path, image_size: int, individuals: int, per_look: int, seed: int,
                    embedder_dir: Path | None, held_out: str, train_looks: str) -> dict:
    from services.core.identification.gallery import Gallery
    from services.core.identification.metrics import map_at_5
    from services.core.identification.ranking import rank_candidates
    from training.synth.scenes import SceneConfig, population, render_scene

    pool, canonical = population(seed + 101, individuals)
    single = SceneConfig(extra_animal_share=0.0, empty_share=0.0, animal_width=(0.25, 0.6))
    gallery_photos, gallery_ids, queries, query_ids = [], [], [], []
    train_names = train_looks.split(",")
    for i, individual in enumerate(pool):
        for j in range(2 * per_look):
            rng = np.random.default_rng([seed, 21, i, j])
            style_rng = np.random.default_rng([seed, 22, i, j])
            look = held_out if j >= per_look else train_names[j % len(train_names)]
            scene = render_scene(rng, style_rng, [individual], canonical, 240, look, single)
            if not scene.animals:
                continue
            photo = np.asarray(scene.image.convert("RGB"))
            if j < per_look:
                gallery_photos.append(_crop(photo, scene.main_box))
                gallery_ids.append(individual.individual_id)
            else:
                queries.append((photo, scene.main_box))
                query_ids.append(individual.individual_id)
    boxes, scores = _detect(onnx_path, image_size, [q[0] for q in queries])
    detector_crops = []
    for (photo, _), box, score in zip(queries, boxes, scores, strict=True):
        height, width = photo.shape[:2]
        pixel_box = None
        if score >= 0.5:
            pixel_box = [box[0] * width, box[1] * height, box[2] * width, box[3] * height]
            if pixel_box[2] - pixel_box[0] < 2 or pixel_box[3] - pixel_box[1] < 2:
                pixel_box = None
        detector_crops.append(_crop(photo, pixel_box))
    embed = _Embedder(embedder_dir)
    gallery = Gallery(embed(gallery_photos), gallery_ids, ["synthetic"] * len(gallery_ids),
                      [f"g{i}" for i in range(len(gallery_ids))])
    result = {"embedder": embed.name, "individuals": individuals, "gallery_photos": len(gallery_ids),
              "queries": len(query_ids), "query_look": held_out}
    for name, crops in (("truth_crops", [_crop(p, b) for p, b in queries]), ("detector_crops", detector_crops),
                        ("whole_photos", [p for p, _ in queries])):
        candidates = rank_candidates(gallery, embed(crops), k=min(50, len(gallery)))
        predictions = [[str(v) for v in row if v] for row in candidates.ids]
        result[f"map5_{name}"] = round(map_at_5(predictions, query_ids), 4)
    truth = result["map5_truth_crops"]
    result["detector_over_truth"] = round(result["map5_detector_crops"] / truth, 3) if truth else None
    result["whole_over_truth"] = round(result["map5_whole_photos"] / truth, 3) if truth else None
    return result


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_detector")
    parser.add_argument("--run", type=Path, help="an existing detector run (default: train one here)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--scenes", type=int, default=400, help="training scenes (mirrored copies added)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--eval-scenes", type=int, default=200, help="held-out-look and training-look scenes each")
    parser.add_argument("--individuals", type=int, default=40, help="identification: individuals")
    parser.add_argument("--per-look", type=int, default=2, help="identification: scenes per individual and look")
    parser.add_argument("--embedder", type=Path, help="identification export directory (default: pretrained Lite0)")
    parser.add_argument("--held-out-look", default="textured")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from training.detector.export import export_detector
    from training.detector.train import RUN_FILE, config_with, train_detector
    from training.synth.scenes import iter_scenes

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-detector-") as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "run"
            train_detector(run, config_with({"image_size": args.image_size, "scenes": args.scenes,
                                             "epochs": args.epochs, "validation_scenes": 50, "seed": args.seed}))
        trained = time.perf_counter()
        record = json.loads((Path(run) / RUN_FILE).read_text())
        config = config_with(record["config"])
        export = export_detector(run, Path(tmp) / "export")
        onnx_path = export / "model.onnx"
        eval_seed = config.seed + 1000  # other animals, poses and seas than training's
        held_out = _box_quality(onnx_path, config.image_size,
                                list(iter_scenes(args.eval_scenes, eval_seed, 240, args.held_out_look)))
        training_look = _box_quality(onnx_path, config.image_size,
                                     list(iter_scenes(args.eval_scenes, eval_seed, 240, config.looks)))
        identification = _identification(onnx_path, config.image_size, args.individuals, args.per_look, args.seed,
                                         args.embedder, args.held_out_look, config.looks)
    return {
        "detector": {"backbone": config.backbone, "image_size": config.image_size, "training_scenes": config.scenes,
                     "epochs": config.epochs, "training_looks": config.looks,
                     "train_seconds": round(trained - started, 1) if args.run is None else None},
        "held_out_look": {"look": args.held_out_look, **held_out},
        "training_looks": {"looks": config.looks, **training_look},
        "iou_ratio_held_out_vs_whole_frame": (round(held_out["mean_iou"] / held_out["whole_frame_mean_iou"], 2)
                                              if held_out["whole_frame_mean_iou"] else None),
        "identification": identification,
    }


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(json.dumps(main(sys.argv[1:]), indent=2))
