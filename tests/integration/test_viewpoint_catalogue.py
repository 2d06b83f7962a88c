"""Viewpoint hints through `catalogue import` into S3 records (issue #21 item 7): the `viewpoint` column, else the
file name's left/right word; an unreadable value is a warning and the photo still goes in; re-importing with a
changed hint updates the record. S3: the session stack (the `catalogue` fixture's own prefixes)."""

from __future__ import annotations

from services.curation.catalogue.importer import import_catalogue
from support.catalogue import photo, write_csv


def test_import_records_the_viewpoint_hint_and_warns_on_unreadable_values(tmp_path, catalogue):
    src = tmp_path / "kaggle"
    for n, name in enumerate(["1_leftphoto.jpg", "2.jpg", "3.jpg", "4.jpg"]):
        photo(src / "train_images" / name, 40 + n)
    rows = [["1_leftphoto.jpg", "bottlenose_dolphin", "d1", ""], ["2.jpg", "bottlenose_dolphin", "d1", "Right side"],
            ["3.jpg", "bottlenose_dolphin", "d2", "left and right"], ["4.jpg", "bottlenose_dolphin", "d2", ""]]
    write_csv(src / "train.csv", ["image", "species", "individual_id", "viewpoint"], rows)
    report = import_catalogue(src, catalogue, progress=False)
    assert (report.added, report.bad) == (4, [])
    assert [(w.where, "both sides" in w.reason) for w in report.warnings] == [("train.csv:4", True)]
    assert report.as_dict()["warnings"][0]["line"] == 4
    by_source = {r["source"]: r["viewpoint"] for r in catalogue.records().values()}
    assert by_source == {"1_leftphoto.jpg": "left", "2.jpg": "right", "3.jpg": None, "4.jpg": None}

    rows[3][3] = "left"
    write_csv(src / "train.csv", ["image", "species", "individual_id", "viewpoint"], rows)
    again = import_catalogue(src, catalogue, progress=False)
    assert (again.added, again.updated, again.unchanged, again.photos_stored) == (0, 1, 3, 0)
    assert {r["source"]: r["viewpoint"] for r in catalogue.records().values()}["4.jpg"] == "left"
