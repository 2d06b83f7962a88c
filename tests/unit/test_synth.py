"""`whaleid synth`: determinism, the Kaggle layout, the long tail, both detectors, seen and new test animals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.cli.main import main as whaleid
from services.core.errors import DataError
from training.synth import NEW_INDIVIDUAL, generate
from training.synth.individuals import make_individual
from training.synth.plan import plan
from training.synth.render import canonical_rgba
from training.synth.species import SPECIES, species_by_name


@pytest.fixture(scope="module")
def small_synth(synth_dataset):
    """The SMALL synthetic set (generated once per session, the `synth_dataset` fixture in tests/conftest.py)."""
    return synth_dataset()


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    first = generate(tmp_path / "a", individuals=8, seed=42, max_photos=3)
    generate(tmp_path / "b", individuals=8, seed=42, max_photos=3)
    generate(tmp_path / "c", individuals=8, seed=43, max_photos=3)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert first["train_images"] + first["test_images"] == len([n for n in a if n.endswith(".jpg")])
    assert a == b
    assert a.keys() != c.keys()


def test_layout_and_columns_follow_the_interfaces(small_synth):
    root, summary = small_synth
    expected = {
        "train.csv": ["image", "species", "individual_id"],
        "test_truth.csv": ["image", "individual_id", "species"],
        "sample_submission.csv": ["image", "predictions"],
        "boxes.csv": ["image", "source", "x0", "y0", "x1", "y1"],
    }
    for name, columns in expected.items():
        assert _rows(root / name)[0] == columns, name
    _, train = _rows(root / "train.csv")
    _, truth = _rows(root / "test_truth.csv")
    _, submission = _rows(root / "sample_submission.csv")
    assert sorted(p.name for p in (root / "train_images").iterdir()) == sorted(r["image"] for r in train)
    assert sorted(p.name for p in (root / "test_images").iterdir()) == sorted(r["image"] for r in truth)
    assert [r["image"] for r in submission] == [r["image"] for r in truth]
    assert all(len(r["predictions"].split()) == 5 for r in submission)
    described = json.loads((root / "dataset.json").read_text())
    assert described["counts"]["train_images"] == len(train) == summary["train_images"]
    assert described["parameters"]["seed"] == 5
    with Image.open(root / "train_images" / train[0]["image"]) as image:
        assert image.format == "JPEG" and image.size == (192, 128)


def test_photos_per_individual_are_long_tailed():
    planned = plan(np.random.default_rng(9), 400, SPECIES, max_photos=12, test_new_share=0.3, zipf_a=1.8)
    counts = np.array([p.train_photos + p.test_photos for p in planned])
    assert np.mean(counts <= 2) >= 0.5  # many with one or two photos
    assert counts.max() >= 10 and np.sum(counts >= 6) >= 10  # a few with many
    assert len({p.species.name for p in planned}) == len(SPECIES)
    seen = [p for p in planned if not p.is_new]
    assert all(p.train_photos >= 1 for p in seen)
    assert all(p.test_photos <= 2 for p in planned if p.is_new)


def test_both_detectors_give_valid_boxes_of_different_tightness(small_synth):
    root, summary = small_synth
    _, boxes = _rows(root / "boxes.csv")
    images = summary["train_images"] + summary["test_images"]
    by_source: dict[str, dict[str, tuple[int, ...]]] = {}
    for row in boxes:
        box = tuple(int(row[c]) for c in ("x0", "y0", "x1", "y1"))
        assert 0 <= box[0] < box[2] <= 192 and 0 <= box[1] < box[3] <= 128, row
        by_source.setdefault(row["source"], {})[row["image"]] = box
    assert set(by_source) == {"fullbody", "yolov5"}
    assert len(by_source["fullbody"]) == images  # the tight detector never misses
    assert 0.6 * images < len(by_source["yolov5"]) < images  # the loose one misses some
    area = {s: {i: (b[2] - b[0]) * (b[3] - b[1]) for i, b in boxes_.items()} for s, boxes_ in by_source.items()}
    ratios = [area["yolov5"][i] / area["fullbody"][i] for i in area["yolov5"]]
    assert np.median(ratios) > 1.25


def test_test_split_has_seen_and_new_individuals(small_synth):
    root, summary = small_synth
    _, train = _rows(root / "train.csv")
    _, truth = _rows(root / "test_truth.csv")
    train_ids = {r["individual_id"] for r in train}
    new = [r for r in truth if r["individual_id"] == NEW_INDIVIDUAL]
    seen = [r for r in truth if r["individual_id"] != NEW_INDIVIDUAL]
    assert seen and new
    assert all(r["individual_id"] in train_ids for r in seen)
    assert 0.2 <= len(new) / len(truth) <= 0.45  # asked for 0.3
    assert summary["new_individuals"] > 0 and summary["test_new_images"] == len(new)
    assert {r["species"] for r in truth} <= {s.name for s in SPECIES}  # truth is spelt right


def test_train_labels_carry_the_kaggle_misspellings(small_synth):
    root, summary = small_synth
    _, train = _rows(root / "train.csv")
    misspelt = [r["species"] for r in train if r["species"] not in {s.name for s in SPECIES}]
    assert misspelt and len(misspelt) == summary["misspelt_labels"]
    assert set(misspelt) <= {m for s in SPECIES for m in s.misspellings}


def test_markings_are_persistent_and_individual():
    species = species_by_name("bottlenose_dolphin")
    first = make_individual(np.random.default_rng([1, 2, 3]), "a", species)
    again = make_individual(np.random.default_rng([1, 2, 3]), "a", species)
    other = make_individual(np.random.default_rng([1, 2, 4]), "b", species)
    assert first == again and first.notches and len(first.patches) >= 2
    pixels = [np.asarray(canonical_rgba(i), dtype=np.int16) for i in (first, again, other)]
    assert np.array_equal(pixels[0], pixels[1])
    assert np.abs(pixels[0] - pixels[2]).mean() > 3  # different notches, patches and scars


def test_bad_parameters_and_existing_output_are_refused(tmp_path):
    with pytest.raises(DataError, match="individuals must be >= 2.*test_new_share"):
        generate(tmp_path / "x", individuals=1, seed=0, test_new_share=1.5)
    with pytest.raises(DataError, match="unknown nuisance preset 'wild'; expected one of easy, normal, hard"):
        generate(tmp_path / "x", individuals=3, seed=0, nuisance="wild")
    generate(tmp_path / "y", individuals=3, seed=0, preview=False)
    with pytest.raises(DataError, match="already holds a data set"):
        generate(tmp_path / "y", individuals=3, seed=0)


def test_cli_writes_a_data_set_and_reports_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    assert whaleid(["synth", str(out), "--individuals", "6", "--seed", "1", "--species", "2",
                    "--image-size", "128", "--no-preview"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["individuals"] == 6
    with Image.open(next((out / "train_images").iterdir())) as image:
        assert image.size == (128, 85)
    assert {r["species"] for r in _rows(out / "test_truth.csv")[1]} <= {SPECIES[0].name, SPECIES[1].name}
    assert whaleid(["synth", str(out), "--individuals", "6"]) == 2
    assert "already holds a data set" in capsys.readouterr().err
