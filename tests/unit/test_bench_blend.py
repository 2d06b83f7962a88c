"""`python -m bench blend` (bench/bench_blend.py) without models: arguments, the clean skip without ../shared/data,
the nyala split a run trained on, and the table of a small result."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import bench_blend, real_sets


def test_arguments():
    args = bench_blend.parse_args(["runs/a=data/a", "runs/b=data/b", "--general", "g", "--looks", "l1", "l2",
                                   "--cache", "c", "--json"])
    assert args.pairs == [("runs/a", Path("data/a")), ("runs/b", Path("data/b"))]
    assert (args.general, args.looks, args.cache, args.json) == ("g", [Path("l1"), Path("l2")], Path("c"), True)
    defaults = bench_blend.parse_args([])
    assert defaults.general == "general" and defaults.looks == [] and not defaults.json
    assert defaults.cache == bench_blend.DEFAULT_CACHE and bench_blend.RESULTS in defaults.cache.parents


@pytest.mark.parametrize("spec", ["runs/a", "=data", "runs/a="])
def test_a_run_without_its_training_data_is_refused(spec, capsys):
    with pytest.raises(SystemExit):
        bench_blend.parse_args([spec])
    assert "RUN=TRAIN_DATA" in capsys.readouterr().err


def test_clean_skip_without_shared_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(real_sets, "NYALA", tmp_path / "absent" / "nyala")
    monkeypatch.setattr(real_sets, "REAL_PHOTOS", tmp_path / "absent" / "real-photos")
    assert bench_blend.real_sets_skipped() == "nyala and fins: ../shared/data absent"
    result = bench_blend.main([])
    assert result["runs"] == {}
    assert result["skipped"] == "nyala and fins: ../shared/data absent; no RUN=TRAIN_DATA given"
    assert capsys.readouterr().out.strip() == f"skipped: {result['skipped']}"


def test_a_nyala_split_linked_into_the_training_data_is_recognised(tmp_path, monkeypatch):
    nyala = tmp_path / "nyala"
    for part in ("test", "train"):
        (nyala / part / "7").mkdir(parents=True)
        (nyala / part / "7" / "1_leftphoto.jpg").write_bytes(b"")
    monkeypatch.setattr(real_sets, "NYALA", nyala)
    layout = tmp_path / "layout" / "train_images"
    layout.mkdir(parents=True)
    os.symlink(nyala / "train" / "7" / "1_leftphoto.jpg", layout / "7_1_leftphoto.jpg")
    assert bench_blend.trained_on_split(layout.parent, "nyala-train")
    assert not bench_blend.trained_on_split(layout.parent, "nyala-test")
    assert not bench_blend.trained_on_split(tmp_path / "elsewhere", "nyala-train")


def test_table():
    configurations = {"run": 0.162, "general": 0.198, "blend@w": 0.169, "blend@0.25": 0.192, "blend@0.5": 0.175,
                      "blend@0.75": 0.166}
    result = {"general_model_id": "general-lite2-384", "runs": {"nyala-lite0": {
        "model_id": "lite0-f0-e004", "train_data": "nyala-train",
        "oof": {"run": {"map5_held_out": 0.0618}, "general": {"map5_held_out": 0.0553},
                "blend": {"map5_held_out": 0.0518}, "w": 0.6, "gain_se": {"run": 0.0131, "blend": 0.0127},
                "recommend": "general"},
        "sets": {"nyala-test": {"kind": "nyala", "configurations": {
                     k: {"map5_cross_fitted": v, "known_top1": 0.1} for k, v in configurations.items()}},
                 "fins": {"kind": "fins", "configurations": {"run": {"map5": 0.0}, "general": {"map5": 0.5}}},
                 "synth-random": {"kind": "look", "configurations": {"run": {"map5_held_out": 0.336}}}}}}}
    lines = bench_blend.table(result).splitlines()
    assert lines[0].startswith("== nyala-lite0 (lite0-f0-e004, trained on nyala-train) vs general (general-lite2")
    assert lines[1] == ("own held-out fold: run 0.062 / general 0.055 / blend 0.052 (OOF w = 0.60); gain SE run "
                        "0.013, blend 0.013; recommends general")
    assert lines[2].split() == ["set", "(figure)", "run", "general", "blend@w", "blend@0.25", "blend@0.5",
                                "blend@0.75"]
    assert lines[3].split() == ["nyala-test", "(map5_cross_fitted)", "0.162", "0.198", "0.169", "0.192", "0.175",
                                "0.166"]
    assert lines[4].split() == ["fins", "(map5)", "0.000", "0.500", "-", "-", "-", "-"]
    assert lines[5].split() == ["synth-random", "(map5_held_out)", "0.336", "-", "-", "-", "-", "-"]


def test_nyala_happywhale_layout_links_the_photos(tmp_path):
    for individual, photos in (("3", ("1_leftphoto.jpg", "2_rightphoto.jpg")), ("12", ("5_leftphoto.jpg",))):
        for photo in photos:
            (tmp_path / "nyala" / "train" / individual).mkdir(parents=True, exist_ok=True)
            (tmp_path / "nyala" / "train" / individual / photo).write_bytes(b"x")
    out = tmp_path / "layout"
    assert real_sets.nyala_happywhale_layout(out, root=tmp_path / "nyala") == 3
    assert (out / "train.csv").read_text().splitlines() == [
        "image,species,individual_id", "12_5_leftphoto.jpg,nyala,n12", "3_1_leftphoto.jpg,nyala,n3",
        "3_2_rightphoto.jpg,nyala,n3"]
    assert (out / "train_images" / "3_1_leftphoto.jpg").is_symlink()
    assert bench_blend.trained_on_split(out, "nyala-train") is False  # real_sets.NYALA is elsewhere
    assert real_sets.nyala_happywhale_layout(out, root=tmp_path / "nyala") == 3  # idempotent
    assert real_sets.nyala_happywhale_layout(tmp_path / "none", root=tmp_path / "absent") == 0
