"""The general identifier (training/general.py): pretrained features, never trained, usable on a catalogue the day
it is imported. End to end on small data: written as a run, evaluated on every fold with a threshold choice,
predicted with its calibrated default, built into a gallery, exported and served by a real Triton. The model here
is Lite0 at 224 px (the configured default is Lite2 at 384 px: the same code, 4x the CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from support.model_repo import crops

LITE0 = {"backbone": "EfficientNetLite0", "image_size": 224}


@pytest.fixture(scope="module")
def general_run(tmp_path_factory):
    from services.cli.main import main

    out = tmp_path_factory.mktemp("general") / "run"
    assert main(["general", "--out", str(out), "--set", "backbone=EfficientNetLite0", "--set", "image_size=224"]) == 0
    return out


@pytest.fixture(scope="module")
def data(synth_dataset):
    return synth_dataset()[0]


def test_the_run_holds_the_pretrained_backbone_untrained(general_run):
    from training.embed import Embedder
    from training.general import general_config, write_general_run
    from training.model import build_general_model

    embedder = Embedder.from_run(general_run)
    assert embedder.model_id == "general-lite0-224" and embedder.embedding_size == 1280
    assert embedder.info["trained"] is False
    images = np.random.default_rng(0).uniform(0, 255, (3, 224, 224, 3)).astype(np.float32)
    fresh = np.asarray(build_general_model(general_config(LITE0))(images))  # ImageNet weights, straight from the .pth
    assert np.max(np.abs(embedder.embed_arrays(images) - fresh)) < 1e-5
    # writing it again keeps it; other settings in the same folder are refused unless --overwrite
    assert write_general_run(general_run, LITE0) == general_run
    with pytest.raises(Exception, match="other settings"):
        write_general_run(general_run, {"image_size": 256, "backbone": "EfficientNetLite0"})


def test_run_general_resolves_to_the_configured_folder(tmp_path, monkeypatch, general_run):
    from training.general import DIR_ENV, resolve_run

    monkeypatch.setenv(DIR_ENV, str(general_run))
    assert resolve_run("general") == str(general_run)  # kept as written (Lite0), not rewritten to general.yaml's
    assert resolve_run(str(tmp_path)) == str(tmp_path)
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "config.yaml").write_text("name: lite0\nhead: arcface\n")
    monkeypatch.setenv(DIR_ENV, str(trained))
    with pytest.raises(Exception, match="not the general identifier"):
        resolve_run("general")


def test_evaluate_scores_every_fold_and_says_where_the_threshold_came_from(general_run, data, capsys, tmp_path):
    from services.cli.main import main

    assert main(["predict", "--data", str(data), "--run", str(general_run), "--out", str(general_run / "a.csv")]) == 0
    printed = capsys.readouterr().out
    assert "general-lite0-224: threshold" in printed and "calibrated default" in printed and "MAP@5" in printed

    assert main(["evaluate", "--data", str(data), "--run", str(general_run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["folds"] == [0, 1, 2, 3, 4] and report["in_fold"] == []  # nothing was trained on any fold
    choice = report["threshold_choice"]
    assert choice["source"] in ("tuned", "calibrated_default") and choice["threshold"] == report["threshold"]
    assert choice["new_queries"] > 0 and choice["known_queries"] > 0
    assert choice["interval"] is not None and choice["interval"][0] <= choice["tuned"] <= choice["interval"][1]
    # the general identifier serves every catalogue: its tuning goes to a folder of this catalogue's, not the run's
    tuning_file = Path(report["tuning_file"])
    assert not (general_run / "tuning.json").exists()
    assert tuning_file.parent.parent == general_run / "catalogues" and tuning_file.parent.name.startswith(data.name)
    saved = json.loads(tuning_file.read_text())
    assert saved["threshold"] == report["threshold"] and saved["validation"]["threshold_choice"] == choice

    assert main(["predict", "--data", str(data), "--run", str(general_run), "--out", str(general_run / "b.csv")]) == 0
    printed = capsys.readouterr().out
    assert f"threshold {report['threshold']:.3f}" in printed and str(tuning_file) in printed

    # another catalogue (the same photos in another folder) is not served this one's threshold
    other = tmp_path / data.name
    shutil.copytree(data, other)
    assert main(["predict", "--data", str(other), "--run", str(general_run), "--out", str(other / "c.csv")]) == 0
    printed = capsys.readouterr().out
    assert "calibrated default" in printed and str(tuning_file) not in printed


def test_gallery_build_validates_the_general_identifier_on_every_fold(general_run, data, tmp_path):
    from services.core.identification.gallery import Gallery
    from services.core.identification.tuning import Tuning
    from services.curation.catalogue.gallery_build import Photos, build_gallery_dir
    from training.data import load_dataset
    from training.embed import Embedder

    dataset = load_dataset(data)
    rows = dataset.train
    photos = Photos([r.image for r in rows], [r.individual_id for r in rows], [r.species for r in rows],
                    [dataset.image_path(r.image) for r in rows])
    messages = []
    summary = build_gallery_dir(Embedder.from_run(general_run), photos, {}, tmp_path / "gallery", messages.append)
    assert summary["folds"] == [0, 1, 2, 3, 4] and summary["tuning_source"] in ("tuned", "calibrated_default")
    assert any("validation out of 5 folds" in m for m in messages)
    tuning = Tuning.load(tmp_path / "gallery")
    assert tuning.threshold == summary["threshold"]
    assert tuning.validation["threshold_choice"]["source"] == summary["tuning_source"]
    assert len(Gallery.load(tmp_path / "gallery")) == len(set(photos.individual_ids))  # one mean per individual


def test_model_repo_build_serves_the_general_identifier_through_triton(general_run, tmp_path, monkeypatch):
    """No --exports: `model-repo build` exports the general identifier ($WHALEID_GENERAL_RUN) and serves it; Triton's
    embeddings equal the offline ones."""
    from services.cli.main import main
    from services.core.imaging import decode_image
    from services.devtools.stack import launch_triton
    from services.serving.triton_client import EmbeddingClient
    from training.embed import Embedder
    from training.general import DIR_ENV

    monkeypatch.setenv(DIR_ENV, str(general_run))
    repository = tmp_path / "repository"
    assert main(["model-repo", "build", "--out", str(repository)]) == 0
    assert (general_run / "exports" / "general-lite0-224" / "model.onnx").is_file()
    images = crops(4)
    offline = Embedder.from_run(general_run).embed_images([decode_image(b) for b in images])
    with launch_triton(repository, tmp_path / "triton") as server:
        server.wait_healthy(120)
        with EmbeddingClient(server.grpc, timeout_s=60) as client:
            client.wait_ready(60)
            served = client.embed(images)
    assert served.shape == (4, 1280)
    assert np.max(np.abs(served - offline)) <= 1e-4
