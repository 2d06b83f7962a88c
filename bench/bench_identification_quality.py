"""Identification quality on looks that no tuning shaped, side by side in one run.

Synthetic sets: one Happywhale-layout set per look of `whaleid synth --style` (photo, grey, overcast,
textured; each its own individuals). The lite0 recipe was developed on `photo` only; the other looks are what a
user's different data is to it. Each trained model is trained on the set's own train split and identifies its
test split (gallery = train images), as a user would train on their own catalogue.

Methods:
  - `pixel`: raw-pixel cosine kNN (training.baseline), the floor;
  - `pretrained`: EfficientNet-Lite0 with its ImageNet weights and no training at all, average-pooled, 224 px;
  - `lite0`: `whaleid train --config lite0` (the pretrained Lite0 fine-tuned);
  - `b0-tiny`: `whaleid train --config b0-tiny` (EfficientNetB0 from scratch);
  - `lite0@synth-photo`: the model trained on synth-photo applied to the other looks (new individuals, a look it
    never saw: transfer without retraining).

Real photos (../shared/data/real-photos, when present; `real-photos` row): every real photo is a gallery
individual of its own except the queries `5412.a.jpg`/`5412.b.jpg` (dolphin 5412, one reference photo) and the
sketch of humpback `w_ac2c28e`; the trained models are the ones trained on synth-photo.

MAP@5 is the identification core's (best score per individual, `new_individual` by threshold) with the
threshold tuned out of sample (`cross_fitted_map5`: two halves by individual, each scored at the threshold
best on the other); `map5_in_sample` beside it is the optimistic figure. The real check has known queries only,
so it reports MAP@5 with `new_individual` never first and the rank of the right animal.

Real development sets (bench/real_sets.py, issue #21; skipped when ../shared/data is absent): nyala (test and
train individuals, an open set split by encounter with held-out individuals as `new_individual`), the fins check,
and box IoU on the real Happywhale boxes; methods side by side (`--real-methods`):
  - `pixel`: raw pixels (training.baseline), centred on the gallery mean;
  - `general`: the general identifier (training.general, its default config: EfficientNet-Lite2 @ 384, GeM);
  - `general-cam`: the general identifier on the CAM localiser's crops (`localiser: cam`, training/localiser.py:
    the box from the top ImageNet class's activation map, no labels; the whole frame when its score is < 0.5);
  - `general-lite0`: the same with EfficientNet-Lite0 @ 224 (overrides);
  - `lite0@synth-photo`: the lite0 trained on synth-photo, only when the synthetic part's finished run is cached
    in --work (never trained for the real part).
  - `general+sift` (`--rerank general`, the default; `--rerank` alone: off): the general identifier's candidates
    re-ranked by SIFT inliers (bench/real_rerank.py: weight and threshold cross-fitted together, the fins check at
    the default weight; SIFT extraction and matching CPU ms beside the embedding's).
A synthetic look other than the default is scored beside nyala as an open set (`--look random`, the default:
`whaleid synth --style random`, 60 individuals, seed 11, 320 px, cached in --work/look-random; whole frames).
The detector measured on the Happywhale boxes is `--detector-run RUN`, else the run cached in
--work/detector-default, else one trained there with `whaleid detector train`'s default config (synthetic scenes,
frozen Lite0; its training seconds are recorded).

JSON keys: `sets` (synthetic looks and the old real-photos row: method -> map5...), `train_seconds`, `methods`,
`real_sets` (real_sets.run's result: `sets` -> {nyala-test, nyala-train, fins} -> `methods` -> figures,
`cost` -> method -> ms_per_image / cpu_ms_per_image over every real image it embedded, `methods` -> notes,
`happywhale_boxes` -> whole_frame / detector / cam IoU summaries), `real_detector` (the detector run used and
its training seconds). `--real-only` skips the synthetic part and keeps the synthetic keys of the previous JSON.

`python -m bench identification_quality [--individuals 200] [--quick] [--set KEY=VALUE] [--work DIR]
[--real-only] [--real-methods pixel general ...] [--detector-run RUN] [--no-cam] [--rerank general]
[--look random]` writes
bench/results/identification_quality.json and .png (runs and sets are kept in --work and reused).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
REAL_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-photos"
TRAIN_STYLE = "photo"
OTHER_LOOKS = ("grey", "overcast", "textured")
METHODS = ("pixel", "pretrained", "lite0", "b0-tiny")
REAL_METHODS = ("pixel", "general", "general-cam", "general-lite0", f"lite0@synth-{TRAIN_STYLE}")
GENERAL_LITE0 = {"backbone": "EfficientNetLite0", "image_size": 224}
DETECTOR_CACHE = "detector-default"
RERANKED = ("general",)  # re-ranked by local features in the real part (bench/real_rerank.py)
LOOKS = ("random",)  # synthetic looks other than the default scored beside the real sets
LOOK_INDIVIDUALS, LOOK_SEED, LOOK_IMAGE_SIZE = 60, 11, 320


# ----------------------------------------------------------------------------- data
def synth_styles() -> tuple[str, ...]:
    """The looks `whaleid synth` can render here (only `photo` before styles existed)."""
    try:
        from training.synth.styles import STYLES
    except ImportError:
        return (TRAIN_STYLE,)
    return tuple(s for s in (TRAIN_STYLE, *OTHER_LOOKS) if s in STYLES)


def make_set(root: Path, individuals: int, seed: int, style: str, image_size: int) -> Path:
    from training.synth import generate

    if (root / "dataset.json").exists():
        return root
    extra = {} if style == TRAIN_STYLE and synth_styles() == (TRAIN_STYLE,) else {"style": style}
    generate(root, individuals=individuals, seed=seed, image_size=image_size, preview=False, **extra)
    return root


def real_photo_check() -> dict | None:
    """The real-photo identity check, or None without ../shared/data/real-photos: every real photo is a gallery
    individual of its own (fins, flukes, hard humpback cases), except the two known identities whose second photos
    are the queries: dolphin `5412` (`5412.a.jpg`, `5412.b.jpg`) and humpback `w_ac2c28e` (its sketch)."""
    fins, crops = REAL_PHOTOS / "finfindr-fins", REAL_PHOTOS / "bottlenose-fin-crops"
    flukes, hard = REAL_PHOTOS / "flukebook-flukes", REAL_PHOTOS / "kaggle-humpback-hard"
    if not fins.is_dir() or not crops.is_dir():
        return None
    queries = {fins / "5412.a.jpg": "5412", fins / "5412.b.jpg": "5412"}
    gallery = {fins / "5412.jpg": "5412"}
    gallery.update({p: p.stem for p in sorted(fins.glob("ind*.*"))})
    gallery.update({p: p.stem for p in sorted(crops.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")})
    gallery.update({p: p.stem for p in sorted(flukes.glob("*.jpg"))})
    if hard.is_dir():
        sketch, photo = hard / "0e6abdd05.jpg", hard / "d6dce5f26.jpg"
        gallery.update({p: p.stem for p in sorted(hard.glob("*.jpg")) if p not in (sketch, photo)})
        if sketch.exists() and photo.exists():
            gallery[photo], queries[sketch] = "w_ac2c28e", "w_ac2c28e"
    return {"gallery": list(gallery), "ids": list(gallery.values()), "queries": list(queries),
            "truths": list(queries.values())}


# ----------------------------------------------------------------------------- features
class PixelFeatures:
    model_id = "pixel"

    def embed(self, paths, boxes) -> np.ndarray:
        from services.core.imaging import load_image_file, preprocess
        from training.baseline import PIXEL_SIZE, pixel_features

        rows = [pixel_features(preprocess(load_image_file(p), PIXEL_SIZE, b)) for p, b in zip(paths, boxes, strict=True)]
        return np.stack(rows).astype(np.float32)


class EmbedderFeatures:
    def __init__(self, embedder):
        self.embedder, self.model_id = embedder, embedder.model_id

    def embed(self, paths, boxes) -> np.ndarray:
        return self.embedder.embed_files(list(paths), list(boxes))


def identify(features, gallery_paths, gallery_boxes, gallery_ids, query_paths, query_boxes, centre: bool):
    from services.core.identification import build_gallery, rank_candidates

    gallery_x = features.embed(gallery_paths, gallery_boxes)
    query_x = features.embed(query_paths, query_boxes)
    if centre:  # raw pixels: centred on the gallery mean, as the baseline does
        mean = gallery_x.mean(axis=0, keepdims=True)
        gallery_x, query_x = gallery_x - mean, query_x - mean
    gallery_x /= np.linalg.norm(gallery_x, axis=1, keepdims=True) + 1e-12
    query_x /= np.linalg.norm(query_x, axis=1, keepdims=True) + 1e-12
    gallery = build_gallery(gallery_x, list(gallery_ids), ["unknown"] * len(gallery_ids),
                            [str(p) for p in gallery_paths])
    return rank_candidates(gallery, query_x, 50)


def score_synth(features, data_dir: Path, centre: bool) -> dict:
    from services.core.identification.tuning import cross_fitted_map5
    from training.data import load_dataset

    data = load_dataset(data_dir)
    source = getattr(getattr(features, "embedder", None), "eval_box_source", "fullbody") or "fullbody"
    train, truth = data.train, data.truth
    candidates = identify(features, [data.image_path(r.image) for r in train],
                          [data.eval_box(r.image, source) for r in train], [r.individual_id for r in train],
                          [data.image_path(r.image) for r in truth], [data.eval_box(r.image, source) for r in truth],
                          centre)
    truths = [r.individual_id for r in truth]
    fitted = cross_fitted_map5(candidates, truths, [r.image if r.individual_id == "new_individual"
                                                    else r.individual_id for r in truth])
    return {"map5": fitted["map5"], "map5_in_sample": fitted["in_sample"], "queries": len(truths)}


def score_real(features, check: dict, centre: bool) -> dict:
    from services.core.identification import map_at_5
    from services.core.identification.ranking import insert_new_individual

    candidates = identify(features, check["gallery"], [None] * len(check["gallery"]), check["ids"],
                          check["queries"], [None] * len(check["queries"]), centre)
    predictions = [[i for i, _ in p] for p in insert_new_individual(candidates, -np.inf)]
    ranks = [int(np.flatnonzero(candidates.ids[q] == t)[0]) + 1 if t in candidates.ids[q] else None
             for q, t in enumerate(check["truths"])]
    return {"map5": round(map_at_5(predictions, check["truths"]), 4), "rank_of_truth": ranks,
            "gallery": len(check["gallery"])}


# ----------------------------------------------------------------------------- training
def train_run(name: str, data_dir: Path, run_dir: Path, overrides: dict) -> tuple[Path, float]:
    """Train a config on the training set (a finished run in `run_dir` is reused); returns (run, seconds)."""
    from training.config import load_config
    from training.train import read_state, train

    timing = run_dir / "train_seconds.txt"
    state = read_state(run_dir) if run_dir.exists() else {}
    if timing.exists() and state.get("epoch") == state.get("epochs"):
        return run_dir, float(timing.read_text())
    started = time.perf_counter()
    train(load_config(name, overrides), data_dir, run_dir, verbose=0)
    seconds = round(time.perf_counter() - started, 1)
    timing.write_text(str(seconds))
    return run_dir, seconds


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(result["sets"])
    methods = list(dict.fromkeys(m for s in sets for m in result["sets"][s]))
    fig, ax = plt.subplots(figsize=(max(8, 2.0 * len(sets)), 4.8))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        values = [result["sets"][s].get(method, {}).get("map5", np.nan) for s in sets]
        bars = ax.bar(np.arange(len(sets)) + i * width, values, width, label=method)
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.2f}" for v in values], fontsize=7)
    ax.set_xticks(np.arange(len(sets)) + width * (len(methods) - 1) / 2, sets)
    ax.set_ylabel("MAP@5 (synthetic: threshold tuned out of sample;\nreal photos: known queries, no threshold)")
    ax.set_ylim(0, 1.05)
    ax.set_title("identification quality: each trained model on its set's own train split")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench identification_quality")
    parser.add_argument("--individuals", type=int, default=200, help="individuals of each synthetic set")
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--quick", action="store_true", help="tiny sets and few epochs (a smoke run)")
    parser.add_argument("--work", default=str(RESULTS / "identification_quality_work"))
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the lite0 config (a separate run directory per set of overrides)")
    parser.add_argument("--real-only", action="store_true",
                        help="only the real development sets (skips the synthetic part; minutes)")
    parser.add_argument("--real-methods", nargs="*", default=list(REAL_METHODS))
    parser.add_argument("--detector-run", type=Path, help="the detector run measured on the real boxes")
    parser.add_argument("--no-cam", action="store_true", help="skip the activation-map localiser")
    parser.add_argument("--rerank", nargs="*", default=list(RERANKED),
                        help="real methods also measured re-ranked by SIFT inliers (`<method>+sift`); none: off")
    parser.add_argument("--look", nargs="*", default=list(LOOKS),
                        help=f"synthetic looks scored beside the real sets ({LOOK_INDIVIDUALS} individuals each)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("faiss", "training.data", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    work = Path(args.work)
    if args.real_only:
        return real_only(args, work)
    from training.config import load_config, parse_set_options
    from training.embed import Embedder, pretrained_embedder

    individuals = 40 if args.quick else args.individuals
    epochs = {"lite0": 2, "b0-tiny": 2} if args.quick else {}
    looks = synth_styles()
    sets = {f"synth-{look}": make_set(work / f"synth-{look}", individuals, 20 + i, look, args.image_size)
            for i, look in enumerate(looks)}
    real = real_photo_check()

    fixed, seconds, trained = {}, {}, {}
    if "pixel" in args.methods:
        fixed["pixel"] = PixelFeatures()
    if "pretrained" in args.methods:
        fixed["pretrained"] = EmbedderFeatures(pretrained_embedder(load_config("lite0", {"image_size": 224})))
    for name in ("lite0", "b0-tiny"):
        if name not in args.methods:
            continue
        overrides = {"epochs": epochs[name]} if name in epochs else {}
        if name == "lite0":
            overrides.update(parse_set_options(args.overrides))
        tag = "-".join(f"{k}={v}" for k, v in sorted(overrides.items())).replace("/", "_")
        for set_name, data_dir in sets.items():  # each trained on its own set's train split
            run_dir, seconds[f"{name}@{set_name}"] = train_run(
                name, data_dir, work / f"run-{name}-{set_name}{'-' + tag if tag else ''}", overrides)
            trained[(name, set_name)] = EmbedderFeatures(Embedder.from_run(run_dir))
            log.info("%s trained on %s in %.0f s", name, set_name, seconds[f"{name}@{set_name}"])

    first = f"synth-{TRAIN_STYLE}"
    result = {"individuals_per_set": individuals, "train_seconds": seconds, "sets": {}, "real_photos": real is not None,
              "methods": {"pixel": "raw-pixel kNN", "pretrained": "EfficientNet-Lite0 ImageNet, no training, 224 px",
                          "lite0": "lite0 trained on the set's own train split",
                          "b0-tiny": "b0-tiny (from scratch) trained on the set's own train split",
                          f"lite0@{first}": f"lite0 trained on {first}, other individuals and looks (transfer)"}}
    for set_name, data_dir in sets.items():
        row = {m: score_synth(f, data_dir, m == "pixel") for m, f in fixed.items()}
        for (name, trained_on), features in trained.items():
            if trained_on == set_name:
                row[name] = score_synth(features, data_dir, False)
        if ("lite0", first) in trained and set_name != first:
            row[f"lite0@{first}"] = score_synth(trained[("lite0", first)], data_dir, False)
        result["sets"][set_name] = row
        log.info("%s: %s", set_name, {m: r["map5"] for m, r in row.items()})
    if real is not None:
        models = dict(fixed)
        if ("lite0", first) in trained:
            models[f"lite0@{first}"] = trained[("lite0", first)]
        if ("b0-tiny", first) in trained:
            models[f"b0-tiny@{first}"] = trained[("b0-tiny", first)]
        result["sets"]["real-photos"] = {m: score_real(f, real, m == "pixel") for m, f in models.items()}
        log.info("real-photos: %s", {m: r["map5"] for m, r in result["sets"]["real-photos"].items()})
    result.update(real_part(args, work))
    RESULTS.mkdir(exist_ok=True)
    plot(result, RESULTS / "identification_quality.png")
    (RESULTS / "identification_quality.json").write_text(json.dumps(result, indent=2))
    print_table(result)
    return result


# ----------------------------------------------------------------------------- the real development sets
def run_tag(overrides: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in sorted(overrides.items())).replace("/", "_")


def general_run(out: Path, overrides: dict | None = None) -> Path:
    from services.core.errors import ConfigError
    from training.general import write_general_run

    try:
        return write_general_run(out, overrides)
    except ConfigError:  # written by an older default config: write the current one
        return write_general_run(out, overrides, overwrite=True)


def real_methods(names, work: Path, lite0_overrides: dict) -> dict:
    """The real part's methods (module docstring); `lite0@synth-photo` only when its run is cached."""
    from bench.real_sets import Method

    methods = {}
    for name in names:
        if name == "pixel":
            pixel = PixelFeatures()
            methods[name] = Method(lambda paths, f=pixel: f.embed(paths, [None] * len(paths)), centre=True,
                                   note="raw pixels (training.baseline), centred on the gallery mean")
            continue
        from training.embed import Embedder

        if name in ("general", "general-cam", "general-lite0"):
            overrides = {"general-lite0": GENERAL_LITE0, "general-cam": {"localiser": "cam"}}.get(name)
            embedder = Embedder.from_run(general_run(work / name, overrides))
            note = f"general identifier {embedder.model_id} (no training)" + (
                ", cropped by the CAM localiser (localiser: cam)" if embedder.localiser is not None else "")
        elif name == f"lite0@synth-{TRAIN_STYLE}":
            from training.train import read_state

            tag = run_tag(lite0_overrides)
            run_dir = work / f"run-lite0-synth-{TRAIN_STYLE}{'-' + tag if tag else ''}"
            state = read_state(run_dir) if (run_dir / "train_seconds.txt").exists() else {}
            if not state or state.get("epoch") != state.get("epochs"):
                log.info("%s: no finished run cached at %s, left out", name, run_dir)
                continue
            embedder = Embedder.from_run(run_dir)
            note = f"lite0 trained on synth-{TRAIN_STYLE} ({run_dir.name}, cached)"
        else:
            raise SystemExit(f"unknown real method {name!r}; known: {', '.join(REAL_METHODS)}")
        methods[name] = Method(lambda paths, e=embedder: e.embed_files(list(paths)), note=note)
    return methods


def real_detector(args, work: Path) -> tuple[tuple[Path, int] | None, dict]:
    """(exported ONNX, input size) of the detector to measure and a record of where it came from."""
    from training.detector.export import export_detector
    from training.detector.train import RUN_FILE, config_with, train_detector

    run = args.detector_run or work / DETECTOR_CACHE
    if not (run / RUN_FILE).is_file():
        if args.detector_run:
            raise SystemExit(f"{run} is not a detector run (no {RUN_FILE})")
        log.info("training the default detector on synthetic scenes into %s (cached)", run)
        train_detector(run, config_with({}))
    record = json.loads((run / RUN_FILE).read_text())
    onnx_path = run / "export" / "model.onnx"
    if not onnx_path.is_file():
        export_detector(run)
    config = config_with(record["config"])
    note = (f"{config.backbone} head trained on {config.scenes} synthetic scenes ({config.looks}, mirrored) at "
            f"{config.image_size} px, never on real photos; training took {record['seconds']['total']:.0f} s")
    return (onnx_path, config.image_size), {"run": str(run), "config": record["config"],
                                            "train_seconds": record["seconds"]["total"], "note": note}


def real_part(args, work: Path) -> dict:
    from bench import real_sets

    if not (real_sets.NYALA.is_dir() or real_sets.REAL_PHOTOS.is_dir() or real_sets.HAPPYWHALE_BOXES.is_dir()):
        log.info("real development sets absent (%s): skipped", real_sets.SHARED)
        return {"real_sets": {}}
    from bench.real_rerank import Rerank, look_split
    from training.config import parse_set_options

    methods = real_methods(args.real_methods, work, parse_set_options(args.overrides))
    detector, record = (None, {}) if real_sets.happywhale_boxes() is None else real_detector(args, work)
    looks = {f"synth-{look}": look_split(make_set(work / f"look-{look}", LOOK_INDIVIDUALS, LOOK_SEED, look,
                                                  LOOK_IMAGE_SIZE)) for look in args.look}
    rerank = Rerank(tuple(args.rerank)) if args.rerank else None
    real = real_sets.run(methods, detector, record.get("note", ""), cam=not args.no_cam, log=log, rerank=rerank,
                         looks=looks)
    return {"real_sets": real, "real_detector": record}


def real_only(args, work: Path) -> dict:
    from bench import real_sets

    path = RESULTS / "identification_quality.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    result = {k: v for k, v in previous.items() if k not in ("bench", "seconds", "real_sets", "real_detector")}
    result.update(real_part(args, work))
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(real_sets.table(result["real_sets"]), flush=True)
    return result


def print_table(result: dict) -> None:
    sets = list(result["sets"])
    methods = list(dict.fromkeys(m for s in sets for m in result["sets"][s]))
    width = max(12, *(len(m) + 2 for m in methods))
    print(f"{'set':<16}" + "".join(f"{m:>{width}}" for m in methods))
    for s in sets:
        print(f"{s:<16}" + "".join(f"{result['sets'][s].get(m, {}).get('map5', float('nan')):>{width}.3f}"
                                   for m in methods))
    print("training seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["train_seconds"].items()))
    from bench.real_sets import table

    print(table(result.get("real_sets", {})))


if __name__ == "__main__":
    main(sys.argv[1:])
