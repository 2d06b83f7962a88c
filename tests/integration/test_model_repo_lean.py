"""The lean CPU layout (`whaleid model-repo build --lean`, issue #15 item 4): `ensemble` -> one python-backend
step (`pipeline`: decode + resize once, uint8) running one fused ONNX graph (every embedder, flip TTA, blend,
species). Served by a real Triton, its embeddings and species equal the offline path computed here from the
exports themselves (services.core.imaging + onnxruntime per export + services.core.identification.vectors), and clients
see the same contract (IMAGE -> EMBEDDING [+ SPECIES], parameters) as the default layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.serving.model_repo import BuildOptions, RepositoryError, build_repository, validate_repository
from support.model_repo import EPOCHS, SERVED_SPECIES, crops, fake_export

REAL = f"b0-tiny-f0-e{EPOCHS[-1]:03d}"  # exported EfficientNet snapshot: 64 px, species head
PROBE = "probe"  # a tiny second embedder at 96 px with other species: two input sizes, a species union
PROBE_SPECIES = ["humpback_whale", "beluga"]
WEIGHTS = {REAL: 0.6, PROBE: 0.4}


@pytest.fixture(scope="module")
def exports(tmp_path_factory, exported):
    root = tmp_path_factory.mktemp("lean_exports")
    (root / REAL).symlink_to(exported / REAL)
    fake_export(root, PROBE, image_size=96, seed=5, species=PROBE_SPECIES)
    return root


@pytest.fixture(scope="module")
def repository(exports, tmp_path_factory):
    from services.core.identification.tuning import Tuning

    root = tmp_path_factory.mktemp("lean_repo")
    tuning = Tuning(weights=WEIGHTS, flip_tta=True).save(root / "tuning.json")
    build_repository(exports, root / "repository", tuning, BuildOptions(lean=True))
    return root / "repository"


def offline(exports, images: list[bytes]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """EMBEDDING and SPECIES as the offline evaluation computes them, from the export files."""
    import onnxruntime as ort

    from services.core.identification.vectors import blend, blend_probabilities, combine_flip
    from services.core.imaging import decode_image, resize_for_model
    from services.core.model_exports import load_exports

    decoded = [decode_image(b) for b in images]
    embeddings, parts, names = {}, [], []
    for export in load_exports(exports):
        session = ort.InferenceSession(str(export.onnx_path), providers=["CPUExecutionProvider"])
        views = []
        for mirrored in (False, True):
            pixels = np.stack([resize_for_model(np.ascontiguousarray(i[:, ::-1]) if mirrored else i, export.image_size)
                               for i in decoded])
            views.append(session.run(["embedding", "species"], {"image": pixels}))
        embeddings[export.model_id] = combine_flip(views[0][0], views[1][0])
        parts += [(view[1], list(export.species), WEIGHTS[export.model_id] / 2) for view in views]
        names += [n for n in export.species if n not in names]
    return blend(embeddings, WEIGHTS), blend_probabilities(parts, names), names


def test_lean_layout_is_one_python_step_behind_the_same_ensemble_contract(repository):
    from services.serving.model_repo.validation import read_config

    record = validate_repository(repository)
    assert record["models"] == ["ensemble", "pipeline"] and record["lean"]["image_sizes"] == [64, 96]
    assert sorted(e["model_id"] for e in record["embedders"]) == sorted(WEIGHTS)
    ensemble, pipeline = read_config(repository / "ensemble"), read_config(repository / "pipeline")
    assert ensemble.platform == "ensemble" and [s.model_name for s in ensemble.ensemble_scheduling.step] == ["pipeline"]
    assert [(i.name, list(i.dims)) for i in ensemble.input] == [("IMAGE", [1])]
    assert [(o.name, list(o.dims)) for o in ensemble.output] == [("EMBEDDING", [1024]), ("SPECIES", [3])]  # two 512-d members, concatenated
    assert json.loads(ensemble.parameters["species"].string_value) == [*SERVED_SPECIES, "humpback_whale"]
    assert json.loads(ensemble.parameters["model_ids"].string_value) == sorted(WEIGHTS)
    assert pipeline.backend == "python" and pipeline.dynamic_batching.max_queue_delay_microseconds == 0
    assert (repository / "pipeline" / "1" / "whaleid_imaging.py").is_file()
    # the fused graph takes uint8 pixels: normalisation is inside the graph
    from services.core.onnx_signature import onnx_signature

    inputs, outputs = onnx_signature(repository / "pipeline" / "1" / "model.onnx")
    assert [(i.name, i.dtype) for i in inputs] == [("pixels_64", "uint8"), ("pixels_96", "uint8")]
    assert [o.name for o in outputs] == ["EMBEDDING", "SPECIES"]


def test_lean_in_process_equals_the_offline_path(repository, exports):
    from services.serving.model_repo.direct import DirectEnsemble

    images = crops(6)
    embedding, species = DirectEnsemble(repository).embed_with_species(images)
    want_embedding, want_species, names = offline(exports, images)
    assert names == [*SERVED_SPECIES, "humpback_whale"]
    assert np.max(np.abs(embedding - want_embedding)) < 1e-5 and np.max(np.abs(species - want_species)) < 1e-5


def test_lean_repository_served_by_triton_matches_offline(repository, exports, tmp_path):
    from services.devtools.stack import launch_triton
    from services.serving.triton_client import EmbeddingClient, TritonRequestError

    images = crops(6)
    want_embedding, want_species, names = offline(exports, images)
    with launch_triton(repository, tmp_path / "triton") as server:
        server.wait_healthy(120)
        with EmbeddingClient(server.grpc, timeout_s=60) as client:
            client.wait_ready(60)
            embedding, species = client.embed_with_species(images)
            assert client.species_names() == names
            assert set(client.model_versions()) == {"ensemble", "pipeline"}
            with pytest.raises(TritonRequestError, match="IMAGE #0"):
                client.embed([b"this is not an image"])
            again = client.embed(images[:2])  # a failed request leaves the model serving
    assert np.max(np.abs(embedding - want_embedding)) < 1e-5
    assert np.max(np.abs(species - want_species)) < 1e-5
    assert np.max(np.abs(again - want_embedding[:2])) < 1e-5


def test_lean_refusals(exports, repository, tmp_path):
    import shutil

    with pytest.raises(RepositoryError, match="cpu target's layout"):
        build_repository(exports, tmp_path / "gpu", options=BuildOptions(target="gpu", lean=True))
    copy = tmp_path / "copy"
    shutil.copytree(repository, copy)
    with open(copy / "pipeline" / "1" / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(RepositoryError, match="pipeline: checksum mismatch"):
        validate_repository(copy)
