"""Training end to end on a synthetic set: the tiny run learns, beats the untrained net and the pixel baseline,
writes its run directory, resumes, and its embedder uses the server's preprocessing."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest

from services.cli.main import main as whaleid
from services.core import imaging
from services.core.errors import ConfigError


@pytest.fixture(scope="session")
def trained(tiny_run):
    return tiny_run


def _history(run_dir):
    with open(run_dir / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_tiny_run_writes_its_run_directory_and_the_loss_falls(trained):
    run = trained.run_dir
    history = _history(run)
    assert [int(r["epoch"]) for r in history] == list(range(1, 41))
    losses = [float(r["loss"]) for r in history]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
    validated = [r for r in history if r["val_map5"]]
    assert [int(r["epoch"]) for r in validated] == [10, 20, 30, 40]
    assert all(0.0 <= float(r["val_map5"]) <= 1.0 and int(r["val_queries"]) > 0 for r in validated)
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch_*.weights.h5")) == [
        "epoch_010.weights.h5", "epoch_020.weights.h5", "epoch_030.weights.h5", "epoch_040.weights.h5"]
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 40 and state["model_id"] == "b0-tiny-f0-e040"
    assert (run / "lr_schedule.png").read_bytes()[:4] == b"\x89PNG"
    with open(run / "folds.csv", newline="") as fh:
        folds = list(csv.DictReader(fh))
    assert folds and set(folds[0]) == {"individual_id", "fold"}
    assert {int(r["fold"]) for r in folds} == set(range(10))
    assert "image_size: 64" in (run / "config.yaml").read_text()


def test_trained_embedder_keeps_improving_with_training(trained):
    """Held-out test split (gallery: train images; queries: test images, a third of them new animals).

    b0-tiny learns from scratch, and in a test's budget that is all it reliably does: its e040 snapshot beats its
    e010 one by a wide margin (measured 0.40-0.52 against 0.23-0.30), but it lands within noise of raw pixels
    (0.411) and of the untrained network (0.413): measured 0.404 on one loaded run, 0.44-0.52 on others. That is
    why `lite0` (pretrained) is the default; tests/integration/test_lite0_training.py holds the "better than pixels" claim,
    and `python -m bench identification_quality` the comparison on larger sets (the untrained network's figure,
    0.413 on this set, is no longer computed here: it was printed, never asserted, and cost ~9 s)."""
    from training.baseline import pixel_baseline_map5
    from training.data import load_dataset
    from training.embed import Embedder, heldout_map5

    data = load_dataset(trained.data_dir)
    learned = heldout_map5(Embedder.from_run(trained.run_dir), data)
    early = heldout_map5(Embedder.from_run(trained.run_dir, snapshot=10), data)
    pixel = pixel_baseline_map5(trained.data_dir, trained.config["eval_box_source"])["pixel"]
    print(f"held-out MAP@5 trained {learned} epoch 10 {early} pixel {pixel}")
    assert learned["map5"] > early["map5"] + 0.05  # training keeps improving identification
    assert learned["map5_tuned"] > early["map5_tuned"] + 0.05


def test_embedder_api_matches_the_server_preprocessing(trained):
    from training.data import load_dataset
    from training.embed import Embedder, load_embedding_model
    from training.pipeline import eval_dataset

    data = load_dataset(trained.data_dir)
    rows = data.train[:5]
    paths = [data.image_path(r.image) for r in rows]
    boxes = [data.eval_box(r.image, "fullbody") for r in rows]
    embedder = Embedder.from_run(trained.run_dir)
    assert (embedder.model_id, embedder.image_size, embedder.embedding_size) == ("b0-tiny-f0-e040", 64, 512)
    from_files = embedder.embed_files(paths, boxes)
    from_images = embedder.embed_images([imaging.load_image_file(p) for p in paths], boxes, batch_size=2)
    assert from_files.shape == (5, 512) and from_files.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(from_files, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(from_files, from_images, atol=1e-6)
    # the tf.data eval path is byte-identical to services.core.imaging.preprocess
    batch = next(iter(eval_dataset([str(p) for p in paths], boxes, 64, 8))).numpy()
    expected = np.stack([imaging.preprocess(imaging.load_image_file(p), 64, b) for p, b in zip(paths, boxes,
                                                                                               strict=True)])
    np.testing.assert_array_equal(batch, expected)
    model, info = load_embedding_model(trained.run_dir, snapshot=10)
    assert info["model_id"] == "b0-tiny-f0-e010" and info["epoch"] == 10 and info["fold"] == 0
    assert info["backbone"] == "EfficientNetB0" and info["eval_box_source"] == "fullbody"
    early = np.asarray(model(expected, training=False))
    assert not np.allclose(early, from_files, atol=1e-3)
    with pytest.raises(ConfigError, match="no snapshot of epoch 5"):
        load_embedding_model(trained.run_dir, snapshot=5)


def test_train_pipeline_crops_and_jitters(trained):
    from training.data import load_dataset
    from training.pipeline import train_dataset
    from training.train import samples_for

    data = load_dataset(trained.data_dir)
    samples = samples_for(data, range(8), {}, {}, trained.config)
    assert all(len(b) >= 1 for b in samples.train_boxes)
    config = {**trained.config, "shuffle_buffer": 1}
    first = next(iter(train_dataset(samples, config, 8, with_species=True, seed=1)))
    images = first[0]["image"].numpy()
    assert images.shape == (8, 64, 64, 3) and images.min() >= 0.0 and images.max() <= 255.0
    assert set(first[1]) == {"arcface", "species"}

    # The same photo drawn again and again in one pipeline gets a different crop and colour each time (whatever
    # global seed an earlier test set: the random ops are stateful within an iterator).
    one = samples_for(data, range(1), {}, {}, trained.config)
    one = dataclasses.replace(one, **{f.name: getattr(one, f.name)[:1] * 6 for f in dataclasses.fields(one)
                                      if isinstance(getattr(one, f.name), list)})
    draws = next(iter(train_dataset(one, config, 6, with_species=False, seed=1)))[0]["image"].numpy()
    distinct = {draw.tobytes() for draw in draws}
    assert len(distinct) >= 5, f"only {len(distinct)} distinct augmentations of one photo in 6 draws"


def test_resume_continues_the_epoch_count(trained, tmp_path):
    from training.train import train

    run = tmp_path / "run"
    shutil.copytree(trained.run_dir, run)
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(trained.config, trained.data_dir, run)
    summary = train({**trained.config, "epochs": 41}, trained.data_dir, run, resume=True, verbose=0)
    assert summary["epochs"] == 41 and summary["model_id"] == "b0-tiny-f0-e041"
    history = _history(run)
    assert [int(r["epoch"]) for r in history] == list(range(1, 42))
    assert history[-1]["val_map5"] != ""  # the last epoch is always validated
    assert (run / "checkpoints" / "epoch_041.weights.h5").exists()
    # the learning-rate schedule continued from the saved optimizer step instead of restarting its warm-up
    assert float(history[-1]["lr"]) < float(history[1]["lr"])


def test_cli_train_reports_bad_input(tmp_path, capsys):
    code = whaleid(["train", "--config", "b0-tiny", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert code == 2
    assert "data set directory" in capsys.readouterr().err
    code = whaleid(["train", "--config", "b0-tiny", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                    "--set", "image_size=tiny"])
    assert code == 2
    assert "image_size: expected int" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
