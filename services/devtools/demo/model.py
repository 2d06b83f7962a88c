"""The demo's model artefacts, each step cached in `<workdir>/cache/<key>/` (key: config + data parameters):
synthetic data -> training run holding the config's fold out (`run/`: the honest validation figures and the
tuned threshold) -> final fit on every individual (`final/`, `training.train.final_fit_config`: the model that
is served, so that every catalogued animal is one the model trained on) -> its ONNX export -> gallery of the
final fit + the fold run's threshold re-tuned for it (`training.train.transfer_tuning`) -> Triton model
repository, plus the offline predictions of the served model on the test photos (the reference for the live
MAP@5). With `final_epochs` 0 (the demo's default since 2026-12-06) there is no final fit: the fold run is served,
its threshold tuned out of its held-out fold. A config with `fold: -1` is served as it is, its threshold tuned on
its own train images.

Why the demo trains what it does, with every recipe measured (time, live MAP@5): docs/benchmarks.md, the
paragraphs on the demo under "Training and identification quality"."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)
DONE = ".done"


@dataclass
class DemoModel:
    data_dir: Path
    run_dir: Path  # the served run: the final fit (or the config's run when it has fold -1)
    exports_dir: Path
    gallery_dir: Path  # Gallery.save files + tuning.json: what gets published to the model store
    repository: Path  # Triton model repository
    offline: dict  # {"map5", "predictions": {image: [ids]}, "model_id"}
    fold_run_dir: Path | None = None  # the run that held the validation fold out (None: run_dir is that run)


def cache_key(config: dict, individuals: int, seed: int) -> str:
    text = json.dumps({"config": config, "individuals": individuals, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached_step(path: Path, what: str, build: Callable[[Path], None], progress: Callable[[str], None],
                stamp: str = "ok") -> Path:
    """Run `build(path)` unless `path` holds a finished result (`<path>.done`, written after success, holding
    `stamp`: a step whose inputs can change under the same path, e.g. which run is served, stamps them so that
    a result built from other inputs is rebuilt)."""
    marker = path.with_name(path.name + DONE)
    if marker.exists() and marker.read_text().strip() == stamp:
        progress(f"{what}: cached in {path}")
        return path
    progress(f"{what} ...")
    if path.exists():
        import shutil

        shutil.rmtree(path)
    build(path)
    path.mkdir(parents=True, exist_ok=True)
    marker.write_text(stamp + "\n")
    return path


def embed_data(embedder, data, images: list[str], box_source: str | None) -> np.ndarray:
    paths = [data.image_path(image) for image in images]
    boxes = [data.eval_box(image, box_source) for image in images]
    return embedder.embed_files(paths, boxes)


def build_gallery_dir(embedder, data, run_dir: Path, out: Path, progress: Callable[[str], None],
                      fold_embedder=None) -> None:
    """Tune the new_individual threshold out of fold on the train images and save the gallery of all train
    images (one mean embedding per individual) with tuning.json to `out`: the shared core of `whaleid gallery
    build` (`services.curation.catalogue.gallery_build.build_gallery_dir`: `build_tuned_gallery` with its deployment
    defaults, validation `live` and references `means`) on the data set's train images and the run's folds.
    With `fold_embedder` (the run that held the fold out; `embedder` is then the final fit, `run_dir` the fold
    run), the threshold is tuned on the fold run's embeddings and transferred to the final fit
    (`training.train.transfer_tuning`), whose embeddings make the gallery."""
    from services.curation.catalogue.gallery_build import Photos
    from services.curation.catalogue.gallery_build import build_gallery_dir as build_shared

    images = [row.image for row in data.train]
    photos = Photos(images=images, individual_ids=[row.individual_id for row in data.train],
                    species=[row.species for row in data.train], paths=[data.image_path(i) for i in images],
                    boxes=[data.boxes_for(i) for i in images])
    from training.folds import run_folds

    build_shared(embedder, photos, run_folds(run_dir), out, progress, fold_embedder=fold_embedder)


def offline_predictions(embedder, data, gallery_dir: Path, box_source: str | None) -> dict:
    """Top-five ids per test photo from the Keras embedder + Identifier (the same code the matcher runs)."""
    from services.core.identification import Gallery, Identifier, Tuning, map_at_5

    images = list(data.test_images)
    embeddings = embed_data(embedder, data, images, box_source)
    identifier = Identifier(Gallery.load(gallery_dir), Tuning.load(gallery_dir / "tuning.json"))
    ranked = identifier.identify(embeddings)
    predictions = {image: [i for i, _ in candidates] for image, candidates in zip(images, ranked, strict=True)}
    result = {"model_id": embedder.model_id, "predictions": predictions}
    if data.truth:
        truth = {row.image: row.individual_id for row in data.truth}
        result["map5"] = map_at_5([predictions[i] for i in images], [truth[i] for i in images])
    return result


def save_backbone(run_dir: Path, path: Path) -> Path:
    """The backbone weights of a run's last snapshot, as a Keras weights file that config `weights` loads."""
    import keras

    from training.embed import Embedder

    model = Embedder.from_run(run_dir).model
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    backbone.save_weights(path)
    return path


def prepare_model(workdir: Path, individuals: int, seed: int, config_name: str, progress: Callable[[str], None],
                  overrides: dict | None = None, final_epochs: int | None = None) -> DemoModel:
    """`final_epochs`: the final fit starts from the fold run's backbone and trains that many epochs (a new
    embedding layer and head on every individual); None: the config's recipe from ImageNet."""
    from training.config import load_config

    config = load_config(config_name, overrides)
    key_of = config if final_epochs is None else {**config, "final_epochs": final_epochs}
    root = Path(workdir) / "cache" / cache_key(key_of, individuals, seed)
    progress(f"model cache {root}")
    # no final fit when the run already trains on every individual (fold -1) or `final_epochs` is 0: the run that
    # held the fold out is served, with the threshold tuned on that fold (animals it never trained on)
    final_fit = config["fold"] >= 0 and final_epochs != 0

    def synth(out: Path) -> None:
        from training.synth import generate

        generate(out, individuals=individuals, seed=seed, overwrite=True, preview=False)

    def train(out: Path) -> None:
        from training.train import train as train_run

        train_run(config, data_dir, out, progress=progress)

    def train_final(out: Path) -> None:
        from training.train import final_fit_config
        from training.train import train as train_run

        final = final_fit_config(config)
        if final_epochs is not None:
            start = save_backbone(run_dir, out.parent / "fold_backbone.weights.h5")
            final = {**final, "weights": str(start), "epochs": final_epochs, "validate_every": 0}
        train_run(final, data_dir, out, progress=progress)

    def export(out: Path) -> None:
        from training.export import export_run

        export_run(served_dir, out)

    def gallery(out: Path) -> None:
        build_gallery_dir(embedder(served_dir), data(), run_dir, out, progress,
                          embedder(run_dir) if final_fit else None)

    def offline(out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        result = offline_predictions(embedder(), data(), gallery_dir, embedder().eval_box_source)
        (out / "offline.json").write_text(json.dumps(result, indent=1))
        if "map5" in result:
            progress(f"offline MAP@5 of {result['model_id']} on {len(result['predictions'])} test photos: "
                     f"{result['map5']:.4f}")

    def repository(out: Path) -> None:
        from services.serving.model_repo.builder import build_repository

        build_repository(exports_dir, out, gallery_dir / "tuning.json")

    loaded: dict = {}

    def embedder(run: Path | None = None):
        run = Path(run or served_dir)
        if run not in loaded:
            from training.embed import Embedder

            loaded[run] = Embedder.from_run(run)
        return loaded[run]

    def data():
        if "data" not in loaded:
            from training.data import load_dataset

            loaded["data"] = load_dataset(data_dir)
        return loaded["data"]

    data_dir = cached_step(root / "data", f"synthesising {individuals} individuals (seed {seed})", synth, progress)
    run_dir = cached_step(root / "run", f"training {config_name} ({config.get('epochs')} epochs, fold "
                                        f"{config['fold']} held out)", train, progress)
    served_dir = run_dir
    if final_fit:
        served_dir = cached_step(root / "final", f"final fit of {config_name} on every individual "
                                                 + (f"({config.get('epochs')} epochs)" if final_epochs is None else
                                                    f"({final_epochs} epochs from the fold run's backbone)"),
                                 train_final, progress)
    served = served_model_id(served_dir)
    stamp = f"served {served}" + (f", threshold from {served_model_id(run_dir)}" if final_fit else "")
    exports_dir = cached_step(root / "exports", f"exporting {served} to ONNX", export, progress, stamp)
    gallery_dir = cached_step(root / "gallery", "building the gallery and tuning the threshold", gallery, progress,
                              stamp)
    offline_dir = cached_step(root / "offline", "offline predictions on the test photos", offline, progress, stamp)
    repo = cached_step(root / "model_repository", "building the Triton model repository", repository, progress,
                       stamp)
    return DemoModel(data_dir, served_dir, exports_dir, gallery_dir, repo,
                     json.loads((offline_dir / "offline.json").read_text()), run_dir if final_fit else None)


def served_model_id(run_dir: Path) -> str:
    """The model id of a finished run's last snapshot (state.json)."""
    from training.train import read_state

    return str(read_state(run_dir).get("model_id") or Path(run_dir).name)


def untrained_repository(workdir: Path, config_name: str, progress: Callable[[str], None]) -> Path:
    """A Triton repository serving an untrained `config_name` network (same architecture and cost as a trained
    one), cached in `<workdir>/cache/untrained-<key>/`: what the chain benchmark needs when no demo ran."""
    from training.config import load_config

    config = load_config(config_name)
    root = Path(workdir) / "cache" / f"untrained-{cache_key(config, 0, int(config.get('seed', 0)))}"

    def snapshot(out: Path) -> None:
        import keras

        from training.config import save_config
        from training.embed import CHECKPOINT_DIR, LABELS_FILE, checkpoint_name
        from training.model import build_models

        out.mkdir(parents=True)
        save_config(config, out / "config.yaml")
        (out / LABELS_FILE).write_text(json.dumps({"classes": ["a", "b"], "species": ["s"]}))
        (out / CHECKPOINT_DIR).mkdir()
        train_model, _ = build_models(config, 2, 1)
        keras.utils.set_random_seed(0)
        train_model.save_weights(out / CHECKPOINT_DIR / checkpoint_name(1))

    def export(out: Path) -> None:
        from training.export import export_run

        export_run(run_dir, out)

    def repository(out: Path) -> None:
        from services.serving.model_repo.builder import build_repository

        build_repository(exports_dir, out)

    run_dir = cached_step(root / "run", f"untrained {config_name} snapshot", snapshot, progress)
    exports_dir = cached_step(root / "exports", "exporting to ONNX", export, progress)
    return cached_step(root / "model_repository", "building the Triton model repository", repository, progress)
