"""`whaleid synth --style`: every look writes a valid data set, deterministically, with the same animals and boxes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.cli.main import main as whaleid
from services.core.errors import DataError
from training.data import load_dataset
from training.synth import STYLE_NAMES, generate
from training.synth.individuals import make_individual
from training.synth.render import NUISANCE_PRESETS, canonical_rgba, render_photo
from training.synth.species import SPECIES

TINY = {"individuals": 6, "seed": 3, "max_photos": 3, "image_size": 96}
COLOUR_STYLES = ("photo", "overcast", "textured")

# sha256 of raw render_photo pixels and boxes (see _photo_digest) from the renderer before styles existed
PHOTO_DIGEST = "3401cd33cdd0dfcd9fd28a977e4399a49b68ed01c4a7e9cb95d96f61377b618c"


@pytest.fixture(scope="module")
def styled(tmp_path_factory):
    """style -> (data_dir, summary) of a tiny set, generated once per module and style."""
    cache: dict[str, tuple[Path, dict]] = {}

    def make(style: str, **options):
        key = style + repr(sorted(options.items()))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"synth-{style}")
            cache[key] = (out, generate(out, **{**TINY, **options}, style=style))
        return cache[key]

    return make


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def _images(root: Path) -> list[Path]:
    return sorted(root.glob("*_images/*.jpg"))


@pytest.mark.parametrize("style", STYLE_NAMES)
def test_every_style_writes_a_data_set_the_loader_reads(styled, style):
    root, summary = styled(style)
    data = load_dataset(root)
    assert len(data.train) == summary["train_images"] and len(data.test_images) == summary["test_images"]
    described = json.loads((root / "dataset.json").read_text())
    assert described["parameters"]["style"] == style
    assert sum(described["counts"]["styles"].values()) == summary["train_images"] + summary["test_images"]
    with Image.open(_images(root)[0]) as image:
        assert image.format == "JPEG" and image.size == (96, 64)


@pytest.mark.parametrize("style", ["textured", "random"])
def test_same_seed_and_style_give_identical_files(tmp_path, style):
    generate(tmp_path / "a", **TINY, style=style)
    generate(tmp_path / "b", **TINY, style=style)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_default_style_is_photo_and_photo_renders_as_before_styles(tmp_path):
    generate(tmp_path / "default", **TINY)
    generate(tmp_path / "photo", **TINY, style="photo")
    assert _files(tmp_path / "default") == _files(tmp_path / "photo")
    assert _photo_digest() == PHOTO_DIGEST


def _photo_digest() -> str:
    digest = hashlib.sha256()
    for k, species in enumerate(SPECIES):
        individual = make_individual(np.random.default_rng([7, 2, k]), f"id{k}", species)
        animal, outline = canonical_rgba(individual), individual.outline()
        for photo in range(2):
            picture, box = render_photo(np.random.default_rng([7, 3, k, photo]), animal, outline, 96, 64,
                                        NUISANCE_PRESETS["hard"])
            digest.update(np.asarray(picture).tobytes())
            digest.update(repr(box).encode())
    return digest.hexdigest()


def test_styles_change_the_pixels_but_not_the_animals_boxes_or_labels(styled):
    roots = {style: styled(style)[0] for style in ("photo", "grey", "overcast", "textured")}
    reference = roots.pop("photo")
    for style, root in roots.items():
        for name in ("train.csv", "test_truth.csv", "boxes.csv"):  # same pose, so the same boxes
            assert (root / name).read_bytes() == (reference / name).read_bytes(), (style, name)
        images = _images(root)
        assert [p.relative_to(root) for p in images] == [p.relative_to(reference) for p in _images(reference)]
        differences = [np.abs(_pixels(p) - _pixels(reference / p.relative_to(root))).mean() for p in images]
        assert min(differences) > 8, style  # every photo looks different, not just a few


def test_grey_photos_are_grey_and_colour_styles_are_not(styled):
    for path in _images(styled("grey")[0]):
        pixels = _pixels(path)
        assert np.abs(np.diff(pixels, axis=2)).max() <= 2, path.name  # R == G == B within JPEG tolerance
    for style in COLOUR_STYLES:
        spread = [np.abs(np.diff(_pixels(p), axis=2)).max() for p in _images(styled(style)[0])]
        assert min(spread) > 2, style


def test_random_style_mixes_styles_and_grey_photos(styled):
    root, summary = styled("random", individuals=12, max_photos=4)
    counts = json.loads((root / "dataset.json").read_text())["counts"]
    assert len(counts["styles"]) >= 3 and set(counts["styles"]) <= {"photo", "grey", "overcast", "textured"}
    assert counts["styles"] == summary["styles"]
    total = summary["train_images"] + summary["test_images"]
    assert counts["styles"].get("grey", 0) <= counts["grey_images"] < total
    grey = [p for p in _images(root) if np.abs(np.diff(_pixels(p), axis=2)).max() <= 2]
    assert len(grey) == counts["grey_images"]


def test_unknown_style_is_refused_and_the_cli_flag_is_recorded(tmp_path, capsys):
    with pytest.raises(DataError, match="unknown style 'sepia'; expected one of photo, grey, overcast, textured, random"):
        generate(tmp_path / "x", **TINY, style="sepia")
    out = tmp_path / "cli"
    assert whaleid(["synth", str(out), "--individuals", "4", "--image-size", "64", "--style", "overcast",
                    "--no-preview"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["styles"]) == {"overcast"}
    assert json.loads((out / "dataset.json").read_text())["parameters"]["style"] == "overcast"
