"""The Triton models' sources in model_repo/ (config.pbtxt templates, python backends) and how the build fills
them: no servers, a few tiny ONNX exports, every config parsed as Triton's ModelConfig."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest

from support.model_repo import fake_detector_export, fake_export

ROOT = Path(__file__).resolve().parents[2]


def test_every_model_folder_is_a_triton_model_and_ships_as_package_data():
    from services.serving.model_repo.builder import VENDORED
    from services.serving.model_repo.templates import MODELS

    folder = ROOT / "model_repo"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(MODELS)
    for model in MODELS:
        assert (folder / model / "config.pbtxt").is_file() and (folder / model / "README.md").is_file(), model
        assert (folder / model / "1" / "model.py").is_file() == (model in VENDORED), model
    assert set(VENDORED) <= set(MODELS)
    packaged = importlib.resources.files("model_repo") / "preprocess" / "config.pbtxt"
    assert packaged.read_text() == (folder / "preprocess" / "config.pbtxt").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'model_repo = ["*.md", "*/config.pbtxt", "*/README.md", "*/1/model.py"]' in pyproject
    assert '"model_repo*"' in pyproject.split("[tool.setuptools.packages.find]")[1].split("\n[")[0]


def test_a_template_and_its_values_that_disagree_fail_naming_the_template():
    from services.core.errors import RepositoryError
    from services.serving.model_repo.templates import render

    text = "# a comment with ${ignored}\nname: \"${name}\"\ndims: [ ${size} ]\n${block}\n"
    assert render(text, "t", {"name": 'a"b', "size": 3}, {"block": 'x { y: "z" }'}) == \
        'name: "a\\"b"\ndims: [ 3 ]\nx { y: "z" }\n'
    with pytest.raises(RepositoryError, match=r"template t: placeholder\(s\) not filled: block, size"):
        render(text, "t", {"name": "a"})
    with pytest.raises(RepositoryError, match=r"template t: value\(s\) without a placeholder: extra"):
        render(text, "t", {"name": "a", "size": 1, "extra": 2}, {"block": ""})
    with pytest.raises(RepositoryError, match=r"template t: line 2 .* has a `\$` that is not"):
        render("a: 1\nb: $size\n", "t", {})
    with pytest.raises(RepositoryError, match=r"model_repo/nosuch/config.pbtxt is missing"):
        from services.serving.model_repo.templates import config_template

        config_template("nosuch")


@pytest.mark.parametrize("variant", ["cpu", "gpu_tensorrt", "lean", "species_flip_detector"])
def test_every_built_config_is_a_filled_triton_model_config(tmp_path, variant):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from services.core.identification.tuning import Tuning
    from services.serving.model_repo import BuildOptions, build_repository

    exports = tmp_path / "exports"
    fake_export(exports, "a", 64, species=["beluga", "orca"] if variant == "species_flip_detector" else ())
    fake_export(exports, "b", 96, seed=1)
    tuning = Tuning(weights={"a": 0.6, "b": 0.4}, flip_tta=True).save(tmp_path / "tuning.json")
    options = {"cpu": BuildOptions(), "gpu_tensorrt": BuildOptions(target="gpu", tensorrt=True),
               "lean": BuildOptions(lean=True), "species_flip_detector": BuildOptions(max_batch_size=4)}[variant]
    detector = fake_detector_export(tmp_path / "detector") if variant == "species_flip_detector" else None
    record = build_repository(exports, tmp_path / "repo", tuning if variant != "cpu" else None, options,
                              detector=detector)
    for name in record["models"]:
        text = (tmp_path / "repo" / name / "config.pbtxt").read_text()
        assert "${" not in text and not text.startswith("#"), name
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert config.name == name and config.max_batch_size == options.max_batch_size
    ensemble = text_format.Parse((tmp_path / "repo" / "ensemble" / "config.pbtxt").read_text(),
                                 model_config_pb2.ModelConfig())
    assert ensemble.parameters["build_id"].string_value == record["build_id"]
    assert [o.name for o in ensemble.output] == (["EMBEDDING", "SPECIES"] if record["species"] else ["EMBEDDING"])
