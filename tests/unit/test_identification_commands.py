"""`whaleid evaluate` / `predict` end to end on a `whaleid synth` data set, with a raw-pixel embedder standing in
for the TensorFlow model (the same interface as training.embed.Embedder; no TensorFlow import: fast)."""

import csv
import json

import numpy as np
import pytest

from services.cli.main import main
from services.core import imaging
from services.core.identification import Tuning
from services.core.identification.evaluation import recommend
from training import identification_commands as commands


class PixelEmbedder:
    """Embedder interface (model_id, embedding_size, eval_box_source, embed_images) on raw 12x12 crops."""

    embedding_size = 12 * 12 * 3

    def __init__(self, model_id="pixels-f0-e001", fold=0, channel_weights=(1.0, 1.0, 1.0)):
        self.model_id, self.info, self.eval_box_source = model_id, {"fold": fold}, "fullbody"
        self.weights = np.asarray(channel_weights, dtype=np.float32)

    def embed_images(self, images, boxes=None, batch_size=32):
        boxes = boxes or [None] * len(images)
        rows = [(imaging.preprocess(i, 12, b) * self.weights).ravel() - 127.0 for i, b in zip(images, boxes, strict=True)]
        rows = np.stack(rows)
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("identification-data")
    assert main(["synth", str(root / "data"), "--individuals", "30", "--seed", "5", "--image-size", "96",
                 "--nuisance", "easy", "--no-preview"]) == 0
    from training.data import load_dataset, split_folds

    data = load_dataset(root / "data")
    run = root / "run"
    run.mkdir()
    folds = split_folds(data.individual_ids, 3, seed=0)
    with open(run / "folds.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["individual_id", "fold"])
        writer.writerows(sorted(folds.items()))
    return root / "data", run, data


@pytest.fixture
def pixel_models(monkeypatch):
    models = {"run": [PixelEmbedder()]}
    monkeypatch.setattr(commands, "load_embedders", lambda runs, snapshot: models["run"])
    return models


def test_evaluate_writes_tuning_and_curve(dataset, pixel_models, capsys):
    data_dir, run, _ = dataset
    assert main(["evaluate", "--data", str(data_dir), "--run", str(run), "--folds", "0", "1", "2", "--k", "20",
                 "--json", "--allow-in-fold"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["per_fold"]) == {"0", "1", "2"} and report["in_fold"] == [1, 2]
    assert report["map5"] >= max(report["map5_threshold_0"], report["map5_threshold_1"])
    # the general identifier (the session's, conftest) scored on the same folds, and a recommendation from the numbers
    comparison = report["comparison"]
    assert comparison["general_model_id"] == "general-lite0-224"
    held = comparison["map5_held_out"]
    assert held["run"] == report["map5_held_out"] and 0 <= held["general"] <= 1
    assert set(held) == {"run", "general", "blend"}  # and the blend of both, weights tuned out of fold
    assert comparison["recommend"] == recommend(held, comparison["gain_standard_error"])
    assert set(comparison["gain_standard_error"]) == {"run", "blend"}
    assert report["map5"] == report["map5_in_sample"] and 0 <= report["map5_held_out"] <= 1
    tuning = Tuning.load(run)  # what evaluate recommends, served by predict / gallery build / model-repo build
    served = comparison["recommend"]
    assert tuning.validation["comparison"] == {"recommend": served, "map5_held_out": held,
                                               "gain_standard_error": comparison["gain_standard_error"]}
    if served == "run":
        assert tuning.threshold == report["threshold"] and tuning.weights == {"pixels-f0-e001": 1.0}
        assert tuning.members == {}
    else:
        assert tuning.members == {"general-lite0-224": "general"} and tuning.weights["general-lite0-224"] > 0
        assert tuning.threshold == comparison["general_threshold" if served == "general" else "blend_threshold"]
    assert report["serves"]["weights"] == tuning.served_weights()
    assert (run / "threshold_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_blends_two_models_and_flip_tta(dataset, pixel_models, capsys):
    data_dir, run, _ = dataset
    pixel_models["run"] = [PixelEmbedder("rgb-f0-e001"), PixelEmbedder("red-f0-e001", channel_weights=(1, 0, 0))]
    assert main(["evaluate", "--data", str(data_dir), "--run", str(run), "--run", str(run), "--flip-tta",
                 "--no-per-species", "--compare", "none"]) == 0
    text = capsys.readouterr().out
    assert "out-of-fold MAP@5" in text and "blend weights" in text
    tuning = Tuning.load(run)
    assert set(tuning.weights) == {"rgb-f0-e001", "red-f0-e001"} and tuning.flip_tta and tuning.per_species == {}
    assert sum(tuning.weights.values()) == pytest.approx(1.0)


def test_predict_writes_a_kaggle_submission(dataset, pixel_models, tmp_path, capsys):
    data_dir, run, data = dataset
    Tuning(threshold=0.6, weights={"pixels-f0-e001": 1.0}).save(tmp_path)
    out = tmp_path / "submission.csv"
    assert main(["predict", "--data", str(data_dir), "--run", str(run), "--tuning", str(tmp_path / "tuning.json"),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows] == data.test_images
    assert all(len(r["predictions"].split()) == 5 for r in rows)
    assert main(["score", str(out), "--truth", str(data_dir / "test_truth.csv"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert f"MAP@5 {scored['map5']:.4f}" in printed  # predict scores against test_truth.csv the same way


def test_evaluate_and_predict_with_mean_references_and_live_validation(dataset, pixel_models, tmp_path, capsys):
    """The deployment's gallery shape (one mean row per individual, tuned on `live` queries) from the CLI; predict
    builds its gallery as the tuning file was tuned unless told otherwise."""
    data_dir, run, data = dataset
    assert main(["evaluate", "--data", str(data_dir), "--run", str(run), "--folds", "0", "--k", "20", "--json",
                 "--references", "means", "--validation", "live"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["references"] == "means" and report["validation"] == "live"
    assert Tuning.load(run).validation["references"] == "means"
    submissions = {}
    for references in ("means", "photos"):
        out = tmp_path / f"{references}.csv"
        argv = ["predict", "--data", str(data_dir), "--run", str(run), "--out", str(out)]
        assert main(argv + (["--references", "photos"] if references == "photos" else [])) == 0
        capsys.readouterr()
        with open(out, newline="") as fh:
            submissions[references] = {r["image"]: r["predictions"].split() for r in csv.DictReader(fh)}
    assert set(submissions["means"]) == set(data.test_images)
    # One row per individual: an individual never appears twice, and the two galleries rank differently.
    assert all(len(set(p)) == len(p) for p in submissions["means"].values())
    assert submissions["means"] != submissions["photos"]


def test_predict_new_share_and_missing_tuning(dataset, pixel_models, tmp_path, capsys):
    data_dir, run, data = dataset
    out = tmp_path / "s.csv"
    assert main(["predict", "--data", str(data_dir), "--run", str(tmp_path), "--out", str(out)]) == 2
    assert "no tuning file" in capsys.readouterr().err
    Tuning(threshold=0.6).save(tmp_path)
    assert main(["predict", "--data", str(data_dir), "--run", str(run), "--tuning", str(tmp_path),
                 "--out", str(out), "--new-share", "0.5"]) == 0
    with open(out, newline="") as fh:
        firsts = [r["predictions"].split()[0] for r in csv.DictReader(fh)]
    assert abs(np.mean([f == "new_individual" for f in firsts]) - 0.5) <= 1.5 / len(firsts)


def test_evaluate_refuses_foreign_folds(dataset, pixel_models, tmp_path, capsys):
    data_dir, _, _ = dataset
    (tmp_path / "folds.csv").write_text("individual_id,fold\nsomeone,0\nsomeone,1\n")
    assert main(["evaluate", "--data", str(data_dir), "--run", str(tmp_path)]) == 2
    assert "appears twice" in capsys.readouterr().err
    (tmp_path / "folds.csv").write_text("individual_id,fold\nsomeone,0\n")
    assert main(["evaluate", "--data", str(data_dir), "--run", str(tmp_path)]) == 2
    assert "not in the run's folds.csv" in capsys.readouterr().err


def test_predict_with_a_real_snapshot(dataset, tmp_path, capsys, snapshot_run):
    """The TensorFlow path: training.embed.Embedder.from_run on an (untrained) b0-tiny snapshot run of the session
    (shared with the export tests); evaluate shares every step but the split with the pixel tests above."""
    import shutil

    data_dir, fold_run, data = dataset
    run = tmp_path / "run"
    shutil.copytree(snapshot_run, run)
    shutil.copy(fold_run / "folds.csv", run / "folds.csv")
    Tuning(threshold=0.5).save(run)
    assert main(["predict", "--data", str(data_dir), "--run", str(run), "--out", str(tmp_path / "s.csv")]) == 0
    assert f"wrote {tmp_path / 's.csv'}: {len(data.test_images)} images" in capsys.readouterr().out
