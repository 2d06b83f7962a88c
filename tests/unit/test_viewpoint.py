"""Viewpoint hints (services.core.identification.viewpoint), read at data loading and catalogue import, and the
`viewpoint-means` gallery: one mean per (individual, viewpoint) while the answer stays per individual."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from services.core.identification import rank_candidates
from services.core.identification.evaluation import LabelledImages, split_gallery
from services.core.identification.gallery import build_reference_gallery
from services.core.identification.threshold_choice import catalogue_threshold
from services.core.identification.viewpoint import (
    ViewpointProblem,
    known_share,
    parse_viewpoint,
    viewpoint_from_name,
    viewpoint_hint,
)
from tests.support.catalogue import photo, write_csv


# ----------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("text, expected", [
    ("left", "left"), ("Left", "left"), (" L ", "left"), ("left flank", "left"), ("Left-side", "left"),
    ("right", "right"), ("R", "right"), ("right dorsal fin", "right"), ("RIGHT_SIDE", "right"),
    ("front", "other"), ("fluke", "other"), ("top view", "other"),
    ("", None), ("unknown", None), ("NA", None), ("-", None), (None, None),
])
def test_parse_viewpoint_normalises_free_text(text, expected):
    assert parse_viewpoint(text) == expected


@pytest.mark.parametrize("text", ["left and right", "left/right", "12", "l3ft", "left #2", "leftish side?",
                                  "left front"])
def test_unreadable_viewpoints_are_problems(text):
    with pytest.raises(ViewpointProblem, match="viewpoint"):
        parse_viewpoint(text)


@pytest.mark.parametrize("name, expected", [
    ("14_leftphoto.jpg", "left"), ("328_rightphoto.jpg", "right"), ("fin-left-03.png", "left"),
    ("IMG_2031 Right.JPG", "right"), ("a/b/leftside_7.jpg", "left"),
    ("right_whale_12.jpg", None),  # the species, not the side
    ("copyright.jpg", None), ("leftovers.jpg", None), ("left_and_right.jpg", None), ("5412.a.jpg", None),
])
def test_viewpoint_from_file_name(name, expected):
    assert viewpoint_from_name(name) == expected


def test_hint_prefers_the_column_and_never_fails():
    assert viewpoint_hint("right", "3_leftphoto.jpg") == ("right", None)
    assert viewpoint_hint("", "3_leftphoto.jpg") == ("left", None)
    assert viewpoint_hint(None, "3.jpg") == (None, None)
    value, problem = viewpoint_hint("left and right", "3_leftphoto.jpg")
    assert value is None and "both sides" in problem
    assert known_share(["left", None, "right", None]) == 0.5 and known_share([]) == 0.0


# ----------------------------------------------------------------------------- galleries
def _flanks(individuals=6, photos_per_flank=3, dim=32, noise=0.35, seed=0):
    """Each individual's left and right flank are unrelated directions (a model that cannot match one flank to
    the other); photos are noisy copies. Returns embeddings, ids, viewpoints, the flank directions."""
    rng = np.random.default_rng(seed)
    centres = {(i, v): rng.normal(size=dim) for i in range(individuals) for v in ("left", "right")}
    x, ids, views = [], [], []
    for (i, v), centre in centres.items():
        for _ in range(photos_per_flank):
            x.append(centre / np.linalg.norm(centre) + noise * rng.normal(size=dim) / np.sqrt(dim))
            ids.append(f"ind{i}")
            views.append(v)
    return np.asarray(x, np.float32), ids, views, centres


def test_viewpoint_means_keep_one_row_per_flank_and_answer_per_individual():
    x, ids, views, centres = _flanks()
    images = [f"p{n}.jpg" for n in range(len(ids))]
    gallery = build_reference_gallery(x, ids, ["sp"] * len(ids), images, "viewpoint-means", viewpoints=views)
    assert len(gallery) == 12 and len(set(gallery.individual_ids)) == 6
    assert gallery.images[:2] == ["mean/ind0@left", "mean/ind0@right"]
    assert [m["viewpoint"] for m in gallery.metadata[:2]] == ["left", "right"] and gallery.metadata[0]["photos"] == 3
    means = build_reference_gallery(x, ids, ["sp"] * len(ids), images, "means", viewpoints=views)
    assert len(means) == 6  # `means` ignores the hints

    rng = np.random.default_rng(1)
    queries = np.stack([c / np.linalg.norm(c) + 0.35 * rng.normal(size=c.size) / np.sqrt(c.size)
                        for c in centres.values()]).astype(np.float32)
    truths = [f"ind{i}" for i, _ in centres]
    by_flank = rank_candidates(gallery, queries, k=12)
    blurred = rank_candidates(means, queries, k=6)
    for row in by_flank.ids:  # five distinct individuals per query: a flank row never repeats its individual
        assert len(set(row)) == 5
    assert list(by_flank.ids[:, 0]) == truths
    # a blurred mean of two unrelated flanks scores its own photos lower than the flank's own mean does
    assert np.all(by_flank.scores[:, 0] > blurred.scores[np.arange(len(truths)),
                                                         [list(r).index(t) for r, t in zip(blurred.ids, truths, strict=True)]])


def test_without_hints_viewpoint_means_are_means_row_for_row():
    x, ids, _, _ = _flanks(seed=3)
    images = [f"p{n}.jpg" for n in range(len(ids))]
    a = build_reference_gallery(x, ids, ["sp"] * len(ids), images, "means")
    for views in (None, [None] * len(ids)):
        b = build_reference_gallery(x, ids, ["sp"] * len(ids), images, "viewpoint-means", viewpoints=views)
        assert b.images == a.images and b.metadata == a.metadata
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
    assert catalogue_threshold(x, ids, references="viewpoint-means") == catalogue_threshold(x, ids, references="means")


def test_unknown_viewpoints_form_their_own_mean_and_evaluation_passes_hints():
    x, ids, views, _ = _flanks(individuals=3, seed=4)
    views = [None if n % 3 == 0 else v for n, v in enumerate(views)]
    data = LabelledImages([f"p{n}" for n in range(len(ids))], ids, ["sp"] * len(ids), np.zeros(len(ids)), views)
    gallery = split_gallery(x, data, np.arange(len(ids)), "viewpoint-means")
    assert gallery.images[:3] == ["mean/ind0", "mean/ind0@left", "mean/ind0@right"]
    assert sum(m["photos"] for m in gallery.metadata) == len(ids)
    threshold = catalogue_threshold(x, ids, references="viewpoint-means", viewpoints=views)
    assert threshold is not None and -1.0 <= threshold <= 1.0
    with pytest.raises(Exception, match="viewpoints"):
        LabelledImages(["a", "b"], ["x", "y"], ["sp", "sp"], np.zeros(2), ["left"])


# ----------------------------------------------------------------------------- loading and import
def _kaggle_layout(root, rows, with_column=True):
    for n, (image, *_rest) in enumerate(rows):
        photo(root / "train_images" / image, seed=n)
    photo(root / "test_images" / "t0.jpg", seed=99)
    header = ["image", "species", "individual_id"] + (["viewpoint"] if with_column else [])
    body = [[image, "bottlenose_dolphin", ind] + ([view] if with_column else []) for image, ind, view in rows]
    write_csv(root / "train.csv", header, body)
    return root


def test_load_dataset_reads_the_column_else_the_name_and_warns(tmp_path, caplog):
    from training.data import load_dataset

    root = _kaggle_layout(tmp_path / "data", [("a_leftphoto.jpg", "d1", ""), ("b.jpg", "d1", "Right side"),
                                              ("c.jpg", "d2", "left and right"), ("d.jpg", "d2", "front")])
    with caplog.at_level(logging.WARNING, logger="training.data"):
        data = load_dataset(root)
    assert [r.viewpoint for r in data.train] == ["left", "right", None, "other"]
    assert "line 4" in caplog.text and "both sides" in caplog.text
    plain = load_dataset(_kaggle_layout(tmp_path / "plain", [("x_rightphoto.jpg", "d1", ""), ("y.jpg", "d1", "")],
                                        with_column=False))
    assert [r.viewpoint for r in plain.train] == ["right", None]


def test_catalogue_sources_carry_the_hint_and_warn_without_dropping_rows(tmp_path):
    from services.curation.catalogue.sources import read_source

    src = tmp_path / "cat"
    for n, name in enumerate(["1_leftphoto.jpg", "2.jpg", "3.jpg"]):
        photo(src / name, seed=n)
    write_csv(src / "photos.csv", ["image", "individual_id", "viewpoint"],
              [["1_leftphoto.jpg", "n1", ""], ["2.jpg", "n1", "RIGHT"], ["3.jpg", "n2", "l3ft!"]])
    fmt, rows, bad = read_source(src / "photos.csv", "csv")
    assert fmt == "csv" and not bad and len(rows) == 3
    assert [r.viewpoint for r in rows] == ["left", "right", None]
    assert rows[2].warning and not rows[0].warning

    folders = tmp_path / "folders"
    photo(folders / "n1" / "7_rightphoto.jpg", seed=5)
    photo(folders / "n1" / "8.jpg", seed=6)
    _, rows, bad = read_source(folders, "folders")
    assert not bad and sorted((r.source_name, r.viewpoint) for r in rows) == [("n1/7_rightphoto.jpg", "right"),
                                                                              ("n1/8.jpg", None)]


def test_bench_compares_means_with_viewpoint_means_on_an_open_split():
    from bench.real_sets import OpenSetSplit, viewpoint_gallery

    x, ids, views, centres = _flanks(individuals=5, photos_per_flank=2, seed=7)
    names = [f"{i}/{n}_{v}photo.jpg" for n, (i, v) in enumerate(zip(ids, views, strict=True))]
    rng = np.random.default_rng(8)
    queries = np.stack([c / np.linalg.norm(c) + 0.35 * rng.normal(size=c.size) / np.sqrt(c.size)
                        for c in centres.values()]).astype(np.float32)
    truths = [f"ind{i}" for i, _ in centres]
    split = OpenSetSplit(gallery=[Path(n) for n in names], gallery_ids=ids, queries=[Path("q.jpg")] * len(truths),
                         truths=truths, groups=truths)
    out = viewpoint_gallery(split, x, queries)
    assert out["hinted_gallery_photos"] == len(ids)
    assert out["means"]["rows"] == 5 and out["viewpoint-means"]["rows"] == 10
    assert out["viewpoint-means"]["known_top1"] == 1.0
    unhinted = OpenSetSplit(gallery=[Path(f"{n}.jpg") for n in range(len(ids))], gallery_ids=ids,
                            queries=split.queries, truths=truths, groups=truths)
    same = viewpoint_gallery(unhinted, x, queries)
    assert same["hinted_gallery_photos"] == 0 and same["means"] == same["viewpoint-means"]
