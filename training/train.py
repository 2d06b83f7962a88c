"""The training loop: k-fold by individual, Elastic ArcFace, snapshots, resume, per-epoch validation MAP@5.

Validation (fold k; config `fold`, -1 = no validation): fold k's individuals are never trained on. Their photos
are identified the way the service identifies new photos: the gallery is every training image plus, for each
validation individual with two or more photos, its first photo; the queries are the remaining validation photos
(truth: their individual, now in the gallery) and the photos of validation individuals with a single photo
(truth: `new_individual`, as it is not in the gallery) — services.core.identification.evaluation.split_fold, the
same split `whaleid evaluate` uses. MAP@5 comes from the identification core (nearest
neighbours, best score per individual, `new_individual` inserted by a threshold) at the threshold that is best on
this validation set (reported as val_threshold), as the Happywhale solutions tuned it.

Final fit (`final_fit_config`, `fold: -1`): the same recipe on every individual, the model to serve once a run
holding a fold out has given the validation figures and the threshold; `transfer_tuning` carries that threshold
over to it.

Run directory: config.yaml, labels.json (class and species order of the heads), folds.csv, lr_schedule.png,
history.csv, state.json, checkpoints/epoch_NNN.weights.h5 + checkpoints/optimizer.npz (for --resume).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from services.core.errors import ConfigError, DataError
from training.config import read_saved_config, save_config
from training.data import load_dataset, split_folds
from training.embed import CHECKPOINT_DIR, LABELS_FILE, checkpoint_name, list_checkpoints, model_id
from training.folds import read_folds, write_folds
from training.pipeline import Samples

log = logging.getLogger(__name__)

HISTORY_FIELDS = ["epoch", "loss", "arcface_loss", "species_loss", "lr", "val_map5", "val_threshold",
                  "val_queries", "seconds"]
OPTIMIZER_FILE = "optimizer.npz"


# ----------------------------------------------------------------------------- data and folds
def labelled_images(data, folds: Mapping[str, int]):
    """The identification core's view of the train images (rows aligned with data.train)."""
    from services.core.identification.evaluation import LabelledImages

    return LabelledImages([r.image for r in data.train], [r.individual_id for r in data.train],
                          [r.species for r in data.train], np.array([folds[r.individual_id] for r in data.train]))


def samples_for(data, rows: Sequence[int], classes: Mapping[str, int], species: Mapping[str, int],
                config: Mapping[str, Any]) -> Samples:
    """Pipeline inputs of data.train[rows]: path, class, species, candidate training boxes, eval box."""
    sources = config["box_sources"]
    picked = [data.train[i] for i in rows]
    return Samples(
        paths=[str(data.image_path(r.image)) for r in picked],
        labels=[classes.get(r.individual_id, 0) for r in picked],
        species=[species.get(r.species, 0) for r in picked],
        train_boxes=[[list(box) for source, box in sorted(data.boxes_for(r.image).items())
                      if not sources or source in sources] for r in picked],
        eval_boxes=[data.eval_box(r.image, config["eval_box_source"]) for r in picked],
    )


def validation_map5(embeddings: np.ndarray, labelled, fold: int, model: str = "model") -> dict[str, float]:
    """Out-of-fold MAP@5 of one fold from the identification core (its split: see the module docstring)."""
    from services.core.identification.evaluation import evaluate_out_of_fold

    report = evaluate_out_of_fold({model: embeddings}, labelled, [fold], per_species=False).report
    return {"map5": report["map5"], "threshold": report["threshold"], "queries": report["queries"],
            "map5_threshold_1": report["map5_threshold_1"]}


# ----------------------------------------------------------------------------- callbacks
def _callbacks():
    import keras

    class Validation(keras.callbacks.Callback):
        """Adds val_map5 / val_threshold / val_queries to the epoch logs (every `every` epochs and the last):
        embeds every train image with the eval preprocessing and scores fold `fold` out of fold."""

        def __init__(self, embedding_model, eval_ds, labelled, fold: int, every: int, last_epoch: int):
            super().__init__()
            self.embedding_model, self.eval_ds, self.labelled = embedding_model, eval_ds, labelled
            self.fold, self.every, self.last_epoch = fold, every, last_epoch

        def on_epoch_end(self, epoch, logs=None):
            number = epoch + 1
            if logs is None or self.every <= 0 or (number % self.every and number != self.last_epoch):
                return
            start = time.perf_counter()
            embeddings = self.embedding_model.predict(self.eval_ds, verbose=0)
            result = validation_map5(embeddings, self.labelled, self.fold)
            logs.update(val_map5=result["map5"], val_threshold=result["threshold"], val_queries=result["queries"])
            log.info("epoch %d validation (fold %d): MAP@5 %.4f at new_individual threshold %.2f (%d queries, "
                     "%.1f s)", number, self.fold, result["map5"], result["threshold"], result["queries"],
                     time.perf_counter() - start)

    class Snapshots(keras.callbacks.Callback):
        """history.csv row, snapshot every N epochs (and the last), optimizer state, state.json."""

        def __init__(self, run_dir: Path, config: Mapping[str, Any], schedule, last_epoch: int):
            super().__init__()
            self.run_dir, self.config, self.schedule, self.last_epoch = run_dir, config, schedule, last_epoch
            self.started = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            number = epoch + 1
            optimizer = self.model.optimizer
            row = {
                "epoch": number, "loss": logs.get("loss", ""), "arcface_loss": logs.get("arcface_loss", ""),
                "species_loss": logs.get("species_loss", ""),
                "lr": float(np.asarray(self.schedule(int(np.asarray(optimizer.iterations))))),
                "val_map5": logs.get("val_map5", ""), "val_threshold": logs.get("val_threshold", ""),
                "val_queries": logs.get("val_queries", ""), "seconds": round(time.perf_counter() - self.started, 2),
            }
            append_history(self.run_dir / "history.csv", row)
            state = read_state(self.run_dir)
            if number % self.config["snapshot_every"] == 0 or number == self.last_epoch:
                checkpoints = self.run_dir / CHECKPOINT_DIR
                self.model.save_weights(checkpoints / checkpoint_name(number))
                np.savez(checkpoints / OPTIMIZER_FILE, *[np.asarray(v) for v in optimizer.variables],
                         epoch=number)
                state.update(checkpoint_epoch=number, checkpoint=str(Path(CHECKPOINT_DIR) / checkpoint_name(number)),
                             model_id=model_id(self.config, number))
                log.info("epoch %d: snapshot %s", number, checkpoints / checkpoint_name(number))
            state.update(epoch=number, epochs=self.config["epochs"], loss=row["loss"], val_map5=row["val_map5"],
                         updated=time.time())
            write_state(self.run_dir, state)

    return Validation, Snapshots


def append_history(path: Path, row: Mapping[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_history(path: Path) -> list[dict[str, str]]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def truncate_history(path: Path, last_epoch: int) -> None:
    """Keep the rows up to `last_epoch` (resuming from a snapshot older than the last logged epoch)."""
    rows = [r for r in read_history(path) if int(r["epoch"]) <= last_epoch]
    if path.exists():
        path.unlink()
    for row in rows:
        append_history(path, row)


def read_state(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "state.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def write_state(run_dir: Path, state: Mapping[str, Any]) -> None:
    path = Path(run_dir) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(state), indent=2))
    tmp.replace(path)


# ----------------------------------------------------------------------------- the run
def prepare_run(config: dict[str, Any], run_dir: Path, resume: bool) -> dict[str, Any]:
    """Create or reopen the run directory; returns the config to train with (the saved one on resume, with the
    new `epochs` when it was raised)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CHECKPOINT_DIR).mkdir(exist_ok=True)
    saved = run_dir / "config.yaml"
    if resume:
        if not saved.exists():
            raise ConfigError(f"--resume: {run_dir} has no config.yaml (not a training run)")
        resumed = read_saved_config(saved)
        changed = {k for k in config if k not in ("epochs",) and config[k] != resumed[k]}
        if changed:
            log.warning("--resume keeps the run's saved config; ignoring changes to %s", ", ".join(sorted(changed)))
        config = {**resumed, "epochs": config["epochs"]}
    elif list_checkpoints(run_dir) or (run_dir / "state.json").exists():
        raise ConfigError(f"{run_dir} already holds a training run: pass --resume to continue it, or a new --out")
    save_config(config, saved)
    return config


def train(config: dict[str, Any], data_dir: str | Path, run_dir: str | Path, resume: bool = False,
          verbose: int | str = "auto", progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train (or resume) one fold; returns a summary (epochs, last loss, val MAP@5, model_id, paths).
    `progress`: one short line per epoch through it instead of Keras's own lines (`verbose` is then ignored)."""
    import keras
    import tensorflow as tf

    from services.core.identification.evaluation import split_fold
    from training.model import build_models
    from training.pipeline import eval_dataset, train_dataset
    from training.schedule import WarmupPeakDecay, plot_schedule
    from training.strategy import choose_strategy, global_batch_size, set_precision

    run_dir = Path(run_dir)
    data = load_dataset(data_dir)
    config = prepare_run(dict(config), run_dir, resume)
    keras.utils.set_random_seed(config["seed"])

    folds_path = run_dir / "folds.csv"
    if resume and folds_path.exists():
        folds = read_folds(folds_path)
    else:
        folds = split_folds(data.individual_ids, config["folds"], config["seed"])
        write_folds(folds_path, folds)
    missing = sorted(set(data.individual_ids) - set(folds))
    if missing:
        raise DataError(f"{folds_path} has no fold for individuals {missing[:10]} (data changed since the run?)")
    labelled = labelled_images(data, folds)
    validate = config["fold"] >= 0 and config["validate_every"] > 0
    train_rows = [i for i, f in enumerate(labelled.folds) if f != config["fold"]]
    queries = len(split_fold(labelled, config["fold"]).query_rows) if config["fold"] >= 0 else 0
    classes = {name: i for i, name in enumerate(sorted({labelled.individual_ids[i] for i in train_rows}))}
    species_names = sorted(set(labelled.species))
    species = {name: i for i, name in enumerate(species_names)}
    (run_dir / LABELS_FILE).write_text(json.dumps({"classes": list(classes), "species": species_names}, indent=1))

    strategy = choose_strategy(config["strategy"])
    policy = set_precision(config, strategy)
    batch = global_batch_size(config, strategy)
    if len(train_rows) < batch:
        raise DataError(f"{len(train_rows)} training images is fewer than one batch of {batch}")
    steps = len(train_rows) // batch
    schedule = WarmupPeakDecay.from_config_dict(config, steps)
    plot_schedule(schedule, steps, run_dir / "lr_schedule.png")
    with_species = bool(config["species_head"] and len(species_names) > 1)
    log.info("training %s on %d images of %d individuals (fold %d: %d validation queries), %d species, batch %d "
             "x %d steps/epoch, %s, %s", config["name"], len(train_rows), len(classes), config["fold"],
             queries, len(species_names), batch, steps, type(strategy).__name__, policy)

    train_ds = train_dataset(samples_for(data, train_rows, classes, species, config), config, batch, with_species,
                             seed=config["seed"])
    with strategy.scope():
        counts = np.bincount([classes[labelled.individual_ids[i]] for i in train_rows], minlength=len(classes))
        train_model, embedding_model = build_models(config, len(classes), len(species_names), counts)
        losses = {"arcface": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
        weights = {"arcface": 1.0}
        if with_species:
            losses["species"] = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            weights["species"] = config["species_loss_weight"]
        optimizer = make_optimizer(schedule, train_model, config["backbone_lr_scale"])
        train_model.compile(optimizer=optimizer, loss=losses, loss_weights=weights,
                            steps_per_execution=config["steps_per_execution"])
        # Adam's moments made here, not on fit's first step: variables created inside the first trace of the
        # train step make tf.function trace it a second time (measured: epoch 1 of b0-tiny 41 s -> 30 s)
        optimizer.build(train_model.trainable_variables)

    initial_epoch = 0
    if resume:
        initial_epoch = restore(train_model, optimizer, run_dir, steps)
        truncate_history(run_dir / "history.csv", initial_epoch)
    if initial_epoch >= config["epochs"]:
        log.info("run %s already completed %d of %d epochs", run_dir, initial_epoch, config["epochs"])
        return summary(run_dir, config)

    Validation, Snapshots = _callbacks()
    callbacks = [Snapshots(run_dir, config, schedule, config["epochs"])]
    if validate and queries:
        every = samples_for(data, range(len(data.train)), classes, species, config)
        callbacks.insert(0, Validation(
            embedding_model, eval_dataset(every.paths, every.eval_boxes, config["image_size"], max(batch, 32)),
            labelled, config["fold"], config["validate_every"], config["epochs"]))
    if progress is not None:
        callbacks.append(_epoch_lines(config, progress))
        verbose = 0
    tf.get_logger().setLevel("ERROR")
    train_model.fit(train_ds, epochs=config["epochs"], initial_epoch=initial_epoch, steps_per_epoch=steps,
                    callbacks=callbacks, verbose=verbose, shuffle=False)  # the tf.data pipeline shuffles
    return summary(run_dir, config)


def _epoch_lines(config: dict[str, Any], progress: Callable[[str], None]):
    """A Keras callback saying `training NAME: epoch E/N, loss L (S s)` after each epoch."""
    import keras

    started = [time.monotonic()]

    def on_epoch_begin(epoch, logs=None):
        started[0] = time.monotonic()

    def on_epoch_end(epoch, logs=None):
        loss = (logs or {}).get("loss")
        said = f", loss {loss:.3f}" if isinstance(loss, (int, float)) else ""
        progress(f"training {config['name']}: epoch {epoch + 1}/{config['epochs']}{said} "
                 f"({time.monotonic() - started[0]:.0f} s)")

    return keras.callbacks.LambdaCallback(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end)


# ----------------------------------------------------------------------------- the final fit
FINAL_FOLD = -1  # config `fold` of a final fit: every individual trained, no validation


def final_fit_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` for the final fit (Kaggle practice: cross-validate to choose the threshold, then fit the model
    that is served on all the data): the same recipe with `fold: -1`, so every catalogued individual is trained
    on. Equivalent to `whaleid train --fold -1`."""
    return {**config, "fold": FINAL_FOLD}


def final_fit_weights(labelled, splits) -> np.ndarray:
    """Per query of the live validation `splits` (`live_splits` of one fold), its weight for a final fit's
    deployment: new_individual keeps its share (`live_weights`), the whole known share goes to the trained
    individuals' queries, as a final fit trained on every known animal (the fold's known-untrained queries, which
    stand for animals the model never trained on, get weight 0)."""
    from services.core.identification.evaluation import live_weights
    from services.core.identification.ranking import NEW_INDIVIDUAL

    weights = live_weights(labelled, splits)
    kinds = np.concatenate([np.where(np.asarray(s.truths, dtype=object) == NEW_INDIVIDUAL, "new",
                                     "trained" if s.kind == "trained" else "untrained") for s in splits])
    trained, untrained = kinds == "trained", kinds == "untrained"
    if trained.any():
        weights[trained] *= (weights[trained].sum() + weights[untrained].sum()) / weights[trained].sum()
        weights[untrained] = 0.0
    return weights


def transfer_tuning(tuning, fold_embeddings: np.ndarray, labelled, model_id: str, references: str = "means"):
    """The tuning of a final fit (`model_id`) from the run that held one fold out (`tuning`: its tuning, from
    `build_tuned_gallery` / `evaluate_out_of_fold` on that fold; `fold_embeddings`: the labelled images embedded
    by that run, rows aligned with `labelled`).

    The final fit has no held-out individual left to tune on (its own out-of-fold tuning treats trained animals
    as new ones: optimistic, too low a threshold). So the threshold(s) are re-tuned on the fold run's live
    validation of that fold, weighted for the final fit's deployment (`final_fit_weights`: every known animal
    trained; the new_individual queries stay the fold's individuals, which that run never trained on, as a new
    animal is). The validation figures stay the fold run's (the honest ones), with a `final_fit` entry recording
    the transfer (`map5_in_sample` / `map5_held_out`: the fold run's live validation weighted so, at the
    re-tuned threshold). Measured on the demo (three final fits): rescaling the threshold by how the trained
    photos' median score moved between the two models did not help (it moved by 1-2%, within retraining noise)."""
    from services.core.identification.evaluation import live_splits, rank_out_of_fold
    from services.core.identification.tuning import (
        Tuning,
        cross_fitted_map5,
        sweep_threshold,
        tune_per_species,
    )

    folds = [int(f) for f in tuning.validation.get("folds") or []]
    if len(folds) != 1:
        raise ConfigError(f"final fit: the threshold transfers from a tuning of exactly one fold, got folds {folds}")
    splits = live_splits(labelled, folds[0])
    weights = final_fit_weights(labelled, splits)
    oof = rank_out_of_fold(np.asarray(fold_embeddings), labelled, splits, tuning.k, references=references)
    used = np.flatnonzero(weights > 0)
    candidates, truths, weights = oof.candidates.subset(used), oof.truths[used], weights[used]
    sweep = sweep_threshold(candidates, truths, weights=weights)
    threshold = float(sweep.best)
    species = tune_per_species(candidates, truths, oof.species[used], threshold, weights=weights)
    held_out = cross_fitted_map5(candidates, truths, oof.groups[used], weights=weights)["map5"]
    validation = {**tuning.validation, "final_fit": {
        "fold_run_threshold": tuning.threshold, "fold_run_weights": dict(tuning.weights),
        "map5_in_sample": sweep.best_map5, "map5_held_out": float(held_out), "queries": int(used.size)}}
    return Tuning(threshold=threshold, per_species=species, weights={model_id: 1.0}, flip_tta=tuning.flip_tta,
                  k=tuning.k, validation=validation)


def make_optimizer(schedule, train_model, backbone_lr_scale: float):
    """Adam; the backbone's steps are `backbone_lr_scale` x the head's (the 1st-place solution's 10x head rate)."""
    from training.optimizer import LayerwiseAdam

    backbone = next((layer for layer in train_model.layers if layer.name.startswith("efficientnet")), None)
    scaled = backbone.trainable_variables if backbone is not None and backbone_lr_scale != 1.0 else []
    return LayerwiseAdam(learning_rate=schedule, scaled_variables=scaled, scale=backbone_lr_scale)


def restore(train_model, optimizer, run_dir: Path, steps_per_epoch: int) -> int:
    """Load the last snapshot (and the optimizer state saved with it); returns its epoch."""
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        log.info("--resume: no snapshot in %s yet, starting at epoch 1", run_dir)
        return 0
    epoch = max(checkpoints)
    train_model.load_weights(checkpoints[epoch])
    saved = run_dir / CHECKPOINT_DIR / OPTIMIZER_FILE  # the optimizer is built (train() builds it after compile)
    if saved.exists():
        with np.load(saved) as arrays:
            values = [arrays[f"arr_{i}"] for i in range(len(arrays.files) - 1)]
            if int(arrays["epoch"]) == epoch and len(values) == len(optimizer.variables):
                for variable, value in zip(optimizer.variables, values, strict=True):
                    variable.assign(value)
            else:
                log.warning("optimizer state in %s does not match snapshot %d: Adam restarts from zero moments",
                            saved, epoch)
                optimizer.iterations.assign(epoch * steps_per_epoch)
    log.info("--resume: continuing %s after epoch %d (%s)", run_dir, epoch, checkpoints[epoch].name)
    return epoch


def summary(run_dir: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    history = read_history(run_dir / "history.csv")
    state = read_state(run_dir)
    last = history[-1] if history else {}

    def number(value):
        return float(value) if value not in (None, "") else math.nan

    return {
        "run": str(run_dir), "model_id": state.get("model_id"), "epochs": int(state.get("epoch", 0)),
        "loss_first": number(history[0]["loss"]) if history else math.nan, "loss_last": number(last.get("loss")),
        "val_map5": number(last.get("val_map5")), "checkpoint": state.get("checkpoint"),
    }
