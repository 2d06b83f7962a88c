"""Live parity with what offline evaluation scores: the species head exported and served, flip TTA served by
Triton exactly as `whaleid evaluate --flip-tta` computes it, and the matcher's per-species threshold.

- export: the ONNX `species` output equals the Keras species head (softmax) of the snapshot; names carry
  Kaggle's spelling fixes (merged columns when two misspellings name one species); runs without a species head
  keep a single output;
- Triton (real server, python backend): a repository built from a tuning file with `flip_tta` serves
  EMBEDDING = blend(combine_flip(e(crop), e(mirrored crop))) and SPECIES = the weighted average of the members'
  probabilities, equal to the offline path on the same crops; clients asking for EMBEDDING alone keep working;
- matcher: the threshold is the hint's species' (app), else the model's most probable species' (model, above
  the minimum probability), else the global one; the Identification record says which.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from support.model_repo import EPOCHS, SERVED_SPECIES, crops, fake_export

REAL = f"b0-tiny-f0-e{EPOCHS[-1]:03d}"  # the exported EfficientNet snapshot (species head over SERVED_SPECIES)
PROBE = "probe"  # a tiny second embedder whose species list differs (the SPECIES output is the union)
PROBE_SPECIES = ["humpback_whale", "beluga"]
WEIGHTS = {REAL: 0.6, PROBE: 0.4}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def run_dir(snapshot_run):
    return snapshot_run


@pytest.fixture(scope="module")
def exports(exported):
    return exported


# ----------------------------------------------------------------------------- export: the species output
def test_exported_species_output_equals_the_keras_species_head(exports, run_dir):
    """onnxruntime on the eval-path pixels of real crops == softmax of the training model's `species` head (built
    independently of the export code: the train model called on the image)."""
    import onnxruntime as ort

    from services.core.imaging import decode_image, preprocess
    from training.embed import load_trained_models

    train_model, _, info = load_trained_models(run_dir, EPOCHS[-1])
    pixels = np.stack([preprocess(decode_image(b), 64) for b in crops()])
    logits = train_model({"image": pixels, "label": np.zeros(len(pixels), np.int32)}, training=False)["species"]
    expected = softmax(np.asarray(logits, np.float64))
    session = ort.InferenceSession(str(exports / REAL / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["embedding", "species"]
    served = session.run(["species"], {"image": pixels})[0]
    assert served.shape == (len(pixels), len(SERVED_SPECIES))
    assert np.max(np.abs(served - expected)) <= 1e-5
    assert np.max(np.abs(served[:, 0] - served[0, 0])) > 1e-4  # the crops give different probabilities
    manifest = json.loads((exports / REAL / "manifest.json").read_text())
    assert info["species"] == ["beluga", "kiler_whale"] and manifest["species"]["names"] == SERVED_SPECIES


def _tiny_models(species: int):
    """A small (train, embedding) model pair shaped like training.model's: `species` Dense on the normalised
    embedding (none when species=0)."""
    import keras

    from training.model import L2Normalize

    keras.utils.set_random_seed(3)
    image = keras.Input((16, 16, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(image))
    normalised = L2Normalize(name="embedding", dtype="float32")(keras.layers.Dense(8)(pooled))
    outputs = {"arcface": keras.layers.Dense(4, name="arcface")(normalised)}
    if species:
        outputs["species"] = keras.layers.Dense(species, name="species", dtype="float32")(normalised)
    return keras.Model(image, outputs), keras.Model(image, normalised)


def test_misspelt_species_are_fixed_and_merged_in_the_export(tmp_path):
    """`globis` and `pilot_whale` both mean short_finned_pilot_whale: one column, their probabilities summed."""
    import onnxruntime as ort

    from training.export import export_model, parity_batch, serving_model

    train_model, embedding_model = _tiny_models(4)
    raw = ["globis", "beluga", "pilot_whale", "kiler_whale"]
    model, names = serving_model(train_model, embedding_model, raw)
    assert names == ["short_finned_pilot_whale", "beluga", "killer_whale"]
    info = {"model_id": "tiny", "backbone": "tiny", "image_size": 16, "embedding_size": 8, "fold": 0, "epoch": 1,
            "eval_box_source": "", "species": names}
    folder = export_model(model, info, tmp_path)
    images = parity_batch(16, 5, seed=2)
    heads = softmax(np.asarray(train_model(images, training=False)["species"], np.float64))
    expected = np.stack([heads[:, 0] + heads[:, 2], heads[:, 1], heads[:, 3]], axis=1)
    served = ort.InferenceSession(str(folder / "model.onnx")).run(["species"], {"image": images})[0]
    assert np.max(np.abs(served - expected)) <= 1e-5 and np.allclose(served.sum(axis=1), 1.0, atol=1e-5)
    assert json.loads((folder / "manifest.json").read_text())["species"]["names"] == names


def test_a_run_without_species_head_keeps_one_output(tmp_path):
    import onnxruntime as ort

    from training.export import export_model, serving_model

    train_model, embedding_model = _tiny_models(0)
    model, names = serving_model(train_model, embedding_model, ["beluga", "kiler_whale"])
    assert model is embedding_model and names == []
    info = {"model_id": "plain", "backbone": "tiny", "image_size": 16, "embedding_size": 8, "fold": 0, "epoch": 1,
            "eval_box_source": "", "species": ["beluga"]}
    folder = export_model(model, info, tmp_path)
    assert [o.name for o in ort.InferenceSession(str(folder / "model.onnx")).get_outputs()] == ["embedding"]
    assert "species" not in json.loads((folder / "manifest.json").read_text())


# ----------------------------------------------------------------------------- repository: flip TTA + SPECIES
@pytest.fixture(scope="module")
def flip_repository(tmp_path_factory, exports):
    from services.core.identification.tuning import Tuning
    from services.serving.model_repo import build_repository

    root = tmp_path_factory.mktemp("flip_repo")
    folder = root / "exports"
    folder.mkdir()
    (folder / REAL).symlink_to(exports / REAL)
    fake_export(folder, PROBE, seed=5, species=PROBE_SPECIES)
    tuning = Tuning(weights=WEIGHTS, flip_tta=True).save(root / "tuning.json")
    build_repository(folder, root / "repository", tuning)
    return root / "repository"


def test_flip_repository_layout(flip_repository):
    from services.serving.model_repo import validate_repository
    from services.serving.model_repo.validation import read_config

    record = validate_repository(flip_repository)
    assert record["flip_tta"] is True and record["species"] == ["beluga", "killer_whale", "humpback_whale"]
    ensemble = read_config(flip_repository / "ensemble")
    steps = [s.model_name for s in ensemble.ensemble_scheduling.step]
    assert steps == ["preprocess", f"embedder_{REAL}", f"embedder_{REAL}", f"embedder_{PROBE}",
                     f"embedder_{PROBE}", "blend"]  # one model per embedder, called for each view
    assert [(o.name, list(o.dims)) for o in ensemble.output] == [("EMBEDDING", [1024]), ("SPECIES", [3])]  # two 512-d members, concatenated
    assert json.loads(ensemble.parameters["species"].string_value) == record["species"]
    assert [o.name for o in read_config(flip_repository / "preprocess").output] == ["PIXELS", "PIXELS_FLIP"]


def test_repository_with_a_wrong_species_output_is_refused(flip_repository, tmp_path):
    import shutil

    from services.serving.model_repo import RepositoryError, validate_repository

    broken = tmp_path / "repository"
    shutil.copytree(flip_repository, broken)
    record = json.loads((broken / "repository.json").read_text())
    record["species"] = record["species"][:2]
    (broken / "repository.json").write_text(json.dumps(record))
    with pytest.raises(RepositoryError, match="model ensemble: output SPECIES dims \\[3\\] do not match the 2 species"):
        validate_repository(broken)
    record["embedders"][0]["species"] = ["only_one"]
    (broken / "repository.json").write_text(json.dumps(record))
    with pytest.raises(RepositoryError, match=f"model embedder_{REAL}: config output 'species' dims \\[2\\]"):
        validate_repository(broken)


@pytest.fixture(scope="module")
def flip_client(flip_repository, tmp_path_factory):
    from services.devtools.stack import launch_triton
    from services.serving.triton_client import EmbeddingClient

    with launch_triton(flip_repository, tmp_path_factory.mktemp("triton_flip")) as server:
        server.wait_healthy(120)
        with EmbeddingClient(server.grpc, timeout_s=60) as client:
            client.wait_ready(60)
            yield client


def _offline(run_dir, flip_repository, images: list[bytes]):
    """What `whaleid evaluate --flip-tta` computes per model (training.embed on each image and on its mirror,
    combine_flip), blended with the tuning weights; species: the Keras head's and the probe's probabilities of
    both views, averaged with the same weights."""
    import onnxruntime as ort

    from services.core.identification.vectors import blend, blend_probabilities, combine_flip
    from services.core.imaging import decode_image, preprocess
    from training.embed import load_trained_models

    decoded = [decode_image(b) for b in images]
    views = [decoded, [np.ascontiguousarray(d[:, ::-1]) for d in decoded]]
    train_model, embedding_model, _ = load_trained_models(run_dir, EPOCHS[-1])
    probe = ort.InferenceSession(str(flip_repository / f"embedder_{PROBE}" / "1" / "model.onnx"))
    embeddings, species = {REAL: [], PROBE: []}, []
    for view in views:
        pixels = np.stack([preprocess(image, 64) for image in view])
        embeddings[REAL].append(np.asarray(embedding_model(pixels, training=False)))
        logits = train_model({"image": pixels, "label": np.zeros(len(pixels), np.int32)}, training=False)["species"]
        species.append((softmax(np.asarray(logits, np.float64)), SERVED_SPECIES, WEIGHTS[REAL] / 2))
        probe_embedding, probe_species = probe.run(["embedding", "species"], {"image": pixels})
        embeddings[PROBE].append(probe_embedding)
        species.append((probe_species, PROBE_SPECIES, WEIGHTS[PROBE] / 2))
    flipped = {m: combine_flip(*views) for m, views in embeddings.items()}
    plain = {m: views[0] for m, views in embeddings.items()}
    names = SERVED_SPECIES + ["humpback_whale"]
    return blend(flipped, WEIGHTS), blend(plain, WEIGHTS), blend_probabilities(species, names)


def test_triton_with_flip_tta_serves_the_offline_combine_flip_embeddings(flip_client, run_dir, flip_repository):
    from services.serving.model_repo.direct import DirectEnsemble

    images = crops()
    offline, without_flip, offline_species = _offline(run_dir, flip_repository, images)
    served, species = flip_client.embed_with_species(images)
    assert served.shape == (len(images), 1024) and species.shape == (len(images), 3)
    assert np.max(np.abs(served - offline)) <= 1e-5
    assert np.max(np.abs(served - without_flip)) > 1e-4  # flip TTA changes the embeddings: the check has teeth
    assert flip_client.species_names() == ["beluga", "killer_whale", "humpback_whale"]
    assert np.max(np.abs(species - offline_species)) <= 1e-5
    assert np.allclose(species.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(flip_client.embed(images), served, atol=1e-6)  # EMBEDDING alone: same contract
    direct, direct_species = DirectEnsemble(flip_repository).embed_with_species(images)
    assert np.max(np.abs(direct - served)) <= 1e-5 and np.max(np.abs(direct_species - species)) <= 1e-5


# ----------------------------------------------------------------------------- matcher: per-species threshold
CENTRES = np.random.default_rng(1).normal(size=(4, 32))
CENTRES /= np.linalg.norm(CENTRES, axis=1, keepdims=True)


@pytest.fixture()
def matcher(tmp_path):
    """services.chain.matcher.matching.Matcher serving a small gallery whose tuning has per-species thresholds."""
    from services.chain.matcher.matching import Matcher, load_state
    from services.core.identification import Tuning, build_gallery
    from services.core.settings import load_settings

    gallery = build_gallery(CENTRES, ["w0", "w1", "k0", "k1"], ["beluga", "beluga", "killer_whale", "killer_whale"],
                            [f"g{i}.jpg" for i in range(4)])
    gallery.save(tmp_path)
    Tuning(threshold=0.6, per_species={"beluga": 0.2, "killer_whale": 0.99}).save(tmp_path / "tuning.json")
    matcher = Matcher(load_settings(), store=None)
    matcher.state = load_state(tmp_path, "v-test")
    return matcher


def _record(index: int, hint: str = "", scores=None):
    """An embedded sighting close to gallery entry `index` (cosine ~0.96)."""
    from services.core import topics

    noisy = CENTRES[index] + np.random.default_rng(index).normal(size=32) * 0.05
    return topics.SightingEmbedded(sighting_id=f"s{index}-{hint}-{bool(scores)}",
                                   embedding=[float(v) for v in noisy / np.linalg.norm(noisy)], model_version="m",
                                   metadata={"species_hint": hint} if hint else None, species_scores=scores)


def test_matcher_takes_the_threshold_of_the_models_species_without_a_hint(matcher):
    confident = {"beluga": 0.1, "killer_whale": 0.9}
    unsure = {"beluga": 0.45, "killer_whale": 0.4, "humpback_whale": 0.15}
    results = matcher.identify([_record(2, scores=confident), _record(2, scores=unsure),
                                _record(2)])
    picked = [(r.species, r.species_source, r.threshold) for r in results]
    assert picked == [("killer_whale", "model", 0.99), ("", "none", 0.6), ("", "none", 0.6)]
    assert results[0].new_individual is True  # ~0.96 is below killer_whale's 0.99, above the global 0.6
    assert results[0].candidates[0] == {"individual_id": "new_individual", "score": 0.99}
    assert results[1].new_individual is False and results[1].candidates[0]["individual_id"] == "k0"


def test_matcher_prefers_the_apps_hint_to_the_model(matcher):
    scores = {"beluga": 0.05, "killer_whale": 0.95}
    hinted, modelled = matcher.identify([_record(2, hint="beluga", scores=scores),
                                         _record(2, scores=scores)])
    assert (hinted.species, hinted.species_source, hinted.threshold) == ("beluga", "app", 0.2)
    assert hinted.new_individual is False and hinted.candidates[0]["individual_id"] == "k0"
    assert (modelled.species, modelled.species_source, modelled.threshold) == ("killer_whale", "model", 0.99)
    assert modelled.new_individual is True


def test_species_choice_rules():
    from services.chain.matcher.matching import SpeciesChoice, choose_species

    assert choose_species({"species_hint": " orca "}, {"beluga": 1.0}, 0.5) == SpeciesChoice("orca", "app")
    assert choose_species({"species_hint": ""}, {"beluga": 0.7, "orca": 0.3}, 0.5) == SpeciesChoice("beluga", "model")
    assert choose_species(None, {"beluga": 0.5, "orca": 0.5}, 0.5) == SpeciesChoice("", "none")  # not above 0.5
    assert choose_species(None, {"beluga": 0.5, "orca": 0.5}, 0.4).source == "model"
    assert choose_species({}, None, 0.5) == SpeciesChoice("", "none")
