"""The real development sets' split logic (bench/real_sets.py) on a fake folder tree: pure, no TensorFlow."""

from __future__ import annotations

from collections import defaultdict

import pytest

from bench import real_sets
from bench.real_sets import (
    NEW_INDIVIDUAL,
    encounter,
    flank,
    nyala_splits,
    open_set_split,
    photos_by_individual,
)


def fake_tree(root, individuals=12, encounters=5):
    """`<split>/<individual>/<encounter>_<left|right>photo.jpg`; encounter numbers not in string order."""
    for split in ("test", "train"):
        for i in range(individuals):
            folder = root / split / f"{i + 1}"
            folder.mkdir(parents=True)
            for e in range(encounters - (i % 3)):  # 5, 4 or 3 encounters
                number = (e + 1) * 97 % 1000 + 7 * i
                for side in ("left", "right")[: 1 + (e + i) % 2]:  # some encounters have one flank only
                    (folder / f"{number}_{side}photo.jpg").write_bytes(b"")
    (root / "test" / "1" / "notes.txt").write_text("not a photo")
    return root


def test_names():
    assert flank("a/14_leftphoto.jpg") == "left" and flank("758_rightphoto.JPG") == "right"
    assert flank("5412.jpg") is None
    assert encounter("x/1022_rightphoto.jpg") == "1022"


def test_encounters_never_split_and_held_out_individuals_are_new(tmp_path):
    photos = photos_by_individual(fake_tree(tmp_path) / "test")
    assert all(p.suffix == ".jpg" for paths in photos.values() for p in paths)
    split = open_set_split(photos, new_share=0.25, seed=0)
    assert len(split.new_individuals) == 3
    assert len(split.queries) == len(split.truths) == len(split.groups)
    assert len(split.gallery) == len(split.gallery_ids)

    gallery_encounters = {(i, encounter(p)) for p, i in zip(split.gallery, split.gallery_ids, strict=True)}
    query_encounters = {(g, encounter(p)) for p, g in zip(split.queries, split.groups, strict=True)}
    assert not gallery_encounters & query_encounters  # an encounter is never on both sides
    # every photo of an encounter used is on the same side, all of them
    used = defaultdict(set)
    for p in [*split.gallery, *split.queries]:
        used[(p.parent.name, encounter(p))].add(p.name)
    for (individual, name), files in used.items():
        assert files == {p.name for p in photos[individual] if encounter(p) == name}

    new = set(split.new_individuals)
    assert not new & set(split.gallery_ids)  # held-out individuals never in the gallery
    for truth, group in zip(split.truths, split.groups, strict=True):
        assert (truth == NEW_INDIVIDUAL) == (group in new)
        assert truth == NEW_INDIVIDUAL or truth == group
    # a new individual's queries are its first encounter (by number); known ones: the later half of encounters
    for individual in new:
        numbers = sorted({int(encounter(p)) for p in photos[individual]})
        asked = {int(encounter(p)) for p, g in zip(split.queries, split.groups, strict=True) if g == individual}
        assert asked == {numbers[0]}
    for individual in set(photos) - new:
        numbers = sorted({int(encounter(p)) for p in photos[individual]})
        shown = {int(encounter(p)) for p, i in zip(split.gallery, split.gallery_ids, strict=True) if i == individual}
        assert shown == set(numbers[: max(1, len(numbers) // 2)])

    again = open_set_split(photos, new_share=0.25, seed=0)
    assert again.queries == split.queries and again.gallery == split.gallery  # deterministic
    assert split.summary()["new_queries"] == sum(t == NEW_INDIVIDUAL for t in split.truths)


def test_absent_data_skips_cleanly(tmp_path, monkeypatch):
    assert nyala_splits(tmp_path / "missing") == {}
    assert photos_by_individual(tmp_path / "missing") == {}
    assert real_sets.fin_check(tmp_path / "missing") is None
    assert real_sets.happywhale_boxes(tmp_path / "missing") is None
    monkeypatch.setattr(real_sets, "NYALA", tmp_path / "missing")
    monkeypatch.setattr(real_sets, "REAL_PHOTOS", tmp_path / "missing")
    monkeypatch.setattr(real_sets, "HAPPYWHALE_BOXES", tmp_path / "missing")
    assert real_sets.run({}) == {}


def test_both_splits_found(tmp_path):
    splits = nyala_splits(fake_tree(tmp_path))
    assert sorted(splits) == ["nyala-test", "nyala-train"]


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_new_share(tmp_path, share):
    split = open_set_split(photos_by_individual(fake_tree(tmp_path) / "test"), new_share=share)
    assert len(split.new_individuals) == round(12 * share)
