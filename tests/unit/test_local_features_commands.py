"""`whaleid evaluate --rerank sift` then `whaleid predict`: the re-ranking weight and the fused threshold are tuned
out of fold, recorded in tuning.json `rerank`, and predict serves them (a fake pixel embedder, a small synth set)."""

import csv
import json

import pytest
from test_identification_commands import PixelEmbedder

from services.cli.main import main
from services.core.identification import Tuning
from services.core.identification.local_features import WEIGHTS
from training import identification_commands as commands


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank-data")
    assert main(["synth", str(root / "data"), "--individuals", "30", "--seed", "7", "--image-size", "128",
                 "--nuisance", "easy", "--no-preview"]) == 0
    from training.data import load_dataset, split_folds

    folds = split_folds(load_dataset(root / "data").individual_ids, 3, seed=0)
    run = root / "run"
    run.mkdir()
    with open(run / "folds.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["individual_id", "fold"])
        writer.writerows(sorted(folds.items()))
    return root / "data", run


def test_evaluate_tunes_rerank_and_predict_serves_it(dataset, monkeypatch, capsys, tmp_path):
    pytest.importorskip("cv2")
    data_dir, run = dataset
    monkeypatch.setattr(commands, "load_embedders", lambda runs, snapshot: [PixelEmbedder()])
    assert main(["evaluate", "--data", str(data_dir), "--run", str(run), "--k", "20", "--compare", "none",
                 "--rerank", "sift", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rerank = report["rerank"]
    assert rerank["method"] == "sift" and rerank["weight"] in WEIGHTS and rerank["queries"] == report["queries"]
    assert 0 <= rerank["map5_held_out"] <= 1 and 0 <= rerank["map5_held_out_without_rerank"] <= 1
    assert rerank["map5_in_sample"] >= rerank["map5_by_weight"]["0.0"]  # weight 0 is one of the choices
    tuning = Tuning.load(run)
    assert tuning.rerank["weight"] == rerank["weight"] and tuning.threshold == rerank["threshold"]
    assert tuning.per_species == {} and report["serves"]["threshold"] == rerank["threshold"]
    out = tmp_path / "submission.csv"
    assert main(["predict", "--data", str(data_dir), "--run", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"re-ranking by SIFT inliers: weight {rerank['weight']}" in printed
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["image", "predictions"] and len(rows) > 1 and all(len(r[1].split()) == 5 for r in rows[1:])
