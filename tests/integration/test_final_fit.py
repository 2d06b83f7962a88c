"""The final fit (Kaggle practice: cross-validate to choose the threshold, then serve a model fitted on every
individual): `fold: -1` trains on every individual; `transfer_tuning` re-tunes the fold run's threshold for a
deployment where every known animal is trained; the demo's gallery step serves the final fit with it.
The fold run is the session's `tiny_run` (b0-tiny at 64 px, fold 0 of 10 held out, trained once per session for
tests/integration/test_training.py too); the final fit is the same recipe with `fold: -1`, two epochs."""

from __future__ import annotations

import json

import numpy as np
import pytest

FINAL_FIT_EPOCHS = {"epochs": 2, "snapshot_every": 2, "validate_every": 0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run):
    """(data_dir, fold run dir, final fit dir, fold summary, final summary + its epoch lines). The fold run is the
    session's read-only `tiny_run`: a second fold-0 training here would cost another ~35 s (a train() call's
    first epoch, which traces the train step, is ~30 s on this host)."""
    from training.train import final_fit_config, train

    final_dir = tmp_path_factory.mktemp("final_fit") / "final"
    epoch_lines = []  # the final fit reports through `progress`, as the demo's console shows it
    final_summary = train(final_fit_config({**tiny_run.config, **FINAL_FIT_EPOCHS}), tiny_run.data_dir, final_dir,
                          progress=epoch_lines.append)
    return (tiny_run.data_dir, tiny_run.run_dir, final_dir, tiny_run.summary,
            {**final_summary, "epoch_lines": epoch_lines})


def labelled_images(count: int = 60, individuals: int = 15, dimension: int = 16, seed: int = 0):
    from services.core.identification.evaluation import LabelledImages

    rng = np.random.default_rng(seed)
    ids = [f"id{i % individuals:02d}" for i in range(count)]
    folds = np.array([int(i[2:]) % 5 for i in ids])
    centres = rng.normal(size=(individuals, dimension))
    embeddings = centres[[int(i[2:]) for i in ids]] + 0.8 * rng.normal(size=(count, dimension))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return LabelledImages([f"img{i:03d}.jpg" for i in range(count)], ids, ["beluga"] * count, folds), embeddings


def test_the_final_fit_trains_every_individual(runs):
    from training.config import read_saved_config
    from training.train import read_history

    data_dir, fold_dir, final_dir, fold_summary, final_summary = runs
    assert fold_summary["model_id"] == "b0-tiny-f0-e040" and final_summary["model_id"] == "b0-tiny-all-e002"
    assert read_saved_config(final_dir / "config.yaml")["fold"] == -1
    fold_classes = json.loads((fold_dir / "labels.json").read_text())["classes"]
    final_classes = json.loads((final_dir / "labels.json").read_text())["classes"]
    folds = {row.split(",")[0]: row.split(",")[1] for row in (fold_dir / "folds.csv").read_text().split()[1:]}
    assert sorted(final_classes) == sorted(folds)  # every individual, fold 0's included
    assert set(fold_classes) == {i for i, f in folds.items() if f != "0"}
    assert all(row["val_map5"] == "" for row in read_history(final_dir / "history.csv"))


def test_training_reports_one_short_line_per_epoch(runs):
    lines = runs[4]["epoch_lines"]
    assert [line.split(", loss")[0] for line in lines] == [f"training b0-tiny: epoch {e}/2" for e in (1, 2)]
    assert all(line.endswith(" s)") for line in lines), lines


def test_the_final_fits_weights_give_the_known_share_to_trained_individuals():
    from services.core.identification.evaluation import live_splits, live_weights
    from training.train import final_fit_weights

    labelled, _ = labelled_images()
    splits = live_splits(labelled, 0)
    kinds = np.concatenate([[s.kind] * len(s.query_rows) for s in splits])
    before, after = live_weights(labelled, splits), final_fit_weights(labelled, splits)
    assert (before[kinds == "fold"] > 0).all() and (after[kinds == "fold"] == 0).all()  # all known here
    assert after[kinds == "new"] == pytest.approx(before[kinds == "new"])
    assert after.sum() == pytest.approx(before.sum())


def test_transfer_tuning_retunes_the_fold_runs_validation_for_the_final_fit():
    from services.core.errors import ConfigError
    from services.core.identification import Tuning
    from services.core.identification.evaluation import live_splits, rank_out_of_fold
    from services.core.identification.tuning import sweep_threshold
    from training.train import final_fit_weights, transfer_tuning

    labelled, fold_embeddings = labelled_images()
    tuning = Tuning(threshold=0.9, per_species={"beluga": 0.9}, weights={"fold-model": 1.0},
                    validation={"map5_held_out": 0.7, "folds": [0]})
    moved = transfer_tuning(tuning, fold_embeddings, labelled, "final-model")
    splits = live_splits(labelled, 0)
    oof = rank_out_of_fold(fold_embeddings, labelled, splits, 50, references="means")
    expected = sweep_threshold(oof.candidates, oof.truths, weights=final_fit_weights(labelled, splits)).best
    assert moved.threshold == pytest.approx(expected) and moved.threshold < 0.9
    assert moved.weights == {"final-model": 1.0} and moved.validation["map5_held_out"] == 0.7
    transfer = moved.validation["final_fit"]
    assert transfer["fold_run_threshold"] == 0.9 and transfer["fold_run_weights"] == {"fold-model": 1.0}
    assert 0 < transfer["map5_held_out"] <= 1 and transfer["queries"] < len(oof.truths)  # untrained known dropped
    with pytest.raises(ConfigError, match="exactly one fold"):
        transfer_tuning(Tuning(validation={"folds": [0, 1]}), fold_embeddings, labelled, "final-model")


def test_the_demo_gallery_serves_the_final_fit_with_the_fold_runs_threshold(runs, tmp_path):
    from services.core.identification import Gallery, Tuning
    from services.devtools.demo.model import build_gallery_dir
    from training.data import load_dataset
    from training.embed import Embedder

    data_dir, fold_dir, final_dir, _, _ = runs
    messages = []
    build_gallery_dir(Embedder.from_run(final_dir), load_dataset(data_dir), fold_dir, tmp_path / "gallery",
                      messages.append, fold_embedder=Embedder.from_run(fold_dir))
    gallery, tuning = Gallery.load(tmp_path / "gallery"), Tuning.load(tmp_path / "gallery" / "tuning.json")
    assert gallery.model_ids == ["b0-tiny-all-e002"] and tuning.weights == {"b0-tiny-all-e002": 1.0}
    transfer = tuning.validation["final_fit"]
    assert transfer["fold_run_weights"] == {"b0-tiny-f0-e040": 1.0} and tuning.validation["folds"] == [0]
    assert any("threshold for the final fit b0-tiny-all-e002" in m for m in messages)


def test_a_cached_demo_step_built_from_other_inputs_is_rebuilt(tmp_path):
    from services.devtools.demo.model import cached_step

    built = []

    def build(out):
        out.mkdir()
        built.append(out)

    cached_step(tmp_path / "step", "step", build, print, stamp="served a")
    cached_step(tmp_path / "step", "step", build, print, stamp="served a")
    assert len(built) == 1
    cached_step(tmp_path / "step", "step", build, print, stamp="served b")
    assert len(built) == 2 and (tmp_path / "step.done").read_text() == "served b\n"
