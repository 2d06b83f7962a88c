"""`whaleid export`: SavedModel + ONNX per snapshot, parity-checked, with the manifest of docs/interfaces.md."""

from __future__ import annotations

import json

import numpy as np
import pytest

from support.model_repo import EPOCHS, SERVED_SPECIES, crops


@pytest.fixture(scope="module")
def exports(exported):
    return exported


@pytest.fixture(scope="module")
def run_dir(snapshot_run):
    return snapshot_run


def test_manifest_follows_the_interface_and_checksums_match(exports, run_dir):
    from services.core.checksums import sha256_file

    folders = sorted(p.name for p in exports.iterdir())
    assert folders == [f"b0-tiny-f0-e{EPOCHS[-1]:03d}"]  # and no staging folder left behind
    for folder in exports.iterdir():
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["model_id"] == folder.name
        assert (manifest["backbone"], manifest["image_size"], manifest["embedding_size"]) == ("EfficientNetB0", 64, 512)
        assert (manifest["fold"], manifest["epoch"]) == (0, int(folder.name[-3:]))
        assert manifest["input"] == {"name": "image", "dtype": "float32", "shape": [-1, 64, 64, 3], "layout": "NHWC",
                                     "range": [0, 255]}
        assert manifest["output"] == {"name": "embedding", "dtype": "float32", "shape": [-1, 512],
                                      "l2_normalised": True}
        species = manifest["species"]  # the run has a species head: a second output, names spelt right
        assert {k: species[k] for k in ("name", "dtype", "shape", "probabilities", "names")} == {
            "name": "species", "dtype": "float32", "shape": [-1, len(SERVED_SPECIES)], "probabilities": True,
            "names": SERVED_SPECIES}
        assert 0.0 <= species["parity_max_abs_diff"] <= 1e-4
        assert manifest["preprocessing"]["resize"] == "pillow-bilinear"
        assert "eval_box_source" in manifest["preprocessing"]
        assert 0.0 <= manifest["parity_max_abs_diff"] <= 1e-4
        assert manifest["run"] == str(run_dir.resolve()) and manifest["created"]
        assert (folder / "saved_model" / "saved_model.pb").is_file()
        assert "model.onnx" in manifest["files"] and "saved_model/saved_model.pb" in manifest["files"]
        for name, checksum in manifest["files"].items():
            assert sha256_file(folder / name) == checksum, name


def test_onnx_embeds_real_crops_like_the_offline_embedder(exports, run_dir):
    """The exported file, run by onnxruntime on the eval-path pixels of real crops, gives the embeddings that
    training.embed gives for the same images (the contract the served ensemble builds on)."""
    import onnxruntime as ort

    from services.core.imaging import decode_image
    from training.embed import Embedder

    images = [decode_image(b) for b in crops()]
    embedder = Embedder.from_run(run_dir, EPOCHS[-1])
    offline = embedder.embed_images(images)
    session = ort.InferenceSession(str(exports / embedder.model_id / "model.onnx"), providers=["CPUExecutionProvider"])
    from services.core.imaging import preprocess

    pixels = np.stack([preprocess(image, embedder.image_size) for image in images])
    served = session.run(["embedding"], {"image": pixels})[0]
    assert served.shape == (len(images), 512)
    assert np.max(np.abs(served - offline)) <= 1e-4
    assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-4)
    assert np.max(np.abs(served[0] - served[1])) > 1e-3  # the images give different embeddings: a real check


def test_parity_check_refuses_a_model_that_does_not_match(exports, run_dir):
    """The parity gate itself: the Keras model of snapshot 1 against the ONNX file of snapshot 2 is refused."""
    from training.embed import load_embedding_model
    from training.export import ExportError, check_parity, parity_batch

    model, info = load_embedding_model(run_dir, EPOCHS[0])
    other = exports / f"b0-tiny-f0-e{EPOCHS[-1]:03d}" / "model.onnx"
    with pytest.raises(ExportError, match=r"b0-tiny-f0-e001: ONNX embeddings differ from Keras by .* export refused"):
        check_parity(model, other, parity_batch(64, 4), 1e-4, info["model_id"])
    assert check_parity(model, other, parity_batch(64, 4), 10.0, info["model_id"]) > 1e-3


def test_export_cli_names_a_missing_snapshot(run_dir, tmp_path, capsys):
    from services.cli.main import main

    assert main(["export", "--run", str(run_dir), "--snapshots", "epoch_009", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "whaleid export: error:" in err and "epoch_009" in err
    assert not any(tmp_path.iterdir())
