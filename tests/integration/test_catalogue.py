"""Catalogue in, gallery out (#12): `whaleid catalogue import` round-trips its three formats into S3 (photos by
content + records.jsonl), reports bad rows by line and is idempotent; `whaleid gallery build` publishes a
version the matcher's loader accepts. S3: the session stack (each test under its own prefixes)."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from services.curation.catalogue.importer import import_catalogue
from services.curation.catalogue.photo_bucket import CatalogueStore
from support.catalogue import photo, write_csv


def objects(store: CatalogueStore) -> dict[str, dict]:
    listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix + "/")
    return {item["Key"]: item for item in listed.get("Contents", [])}


def test_folders_round_trip(tmp_path, catalogue):
    src = tmp_path / "folders"
    photo(src / "whale-A" / "a1.jpg", 1)
    photo(src / "whale-A" / "a2.png", 2, "PNG")
    photo(src / "whale-B" / "b1.webp", 3, "WEBP")
    report = import_catalogue(src, catalogue, progress=False)
    assert (report.format, report.added, report.photos_stored, report.bad) == ("folders", 3, 3, [])
    records = catalogue.records()
    assert sorted((r["individual_id"], r["key"].rsplit(".", 1)[1]) for r in records.values()) == [
        ("whale-A", "jpg"), ("whale-A", "png"), ("whale-B", "webp")]
    stored = objects(catalogue)
    for record in records.values():
        assert record["key"] == f"{catalogue.prefix}/photos/{record['individual_id']}/{record['photo_id']}." \
                                f"{record['key'].rsplit('.', 1)[1]}"
        assert record["key"] in stored and record["species"] == "unknown" and record["width"] == 48
        assert catalogue.get_bytes(record["key"]) == (src / record["source"]).read_bytes()
    assert set(stored) == {r["key"] for r in records.values()} | {catalogue.records_key}


def test_kaggle_round_trip_with_species_fixes_and_boxes(tmp_path, catalogue):
    src = tmp_path / "kaggle"
    for n in range(3):
        photo(src / "train_images" / f"k{n}.jpg", 10 + n)
    write_csv(src / "train.csv", ["image", "species", "individual_id"],
              [["k0.jpg", "kiler_whale", "orca1"], ["k1.jpg", "humpback_whale", "hb7"], ["k2.jpg", "beluga", "hb7"]])
    write_csv(src / "boxes.csv", ["image", "source", "x0", "y0", "x1", "y1"],
              [["k0.jpg", "fullbody", 1, 2, 30, 20], ["test.jpg", "fullbody", 0, 0, 5, 5]])
    report = import_catalogue(src, catalogue, progress=False)
    assert (report.format, report.added, report.individuals, report.bad) == ("kaggle", 3, 2, [])
    by_source = {r["source"]: r for r in catalogue.records().values()}
    assert by_source["k0.jpg"]["species"] == "killer_whale" and by_source["k0.jpg"]["individual_id"] == "orca1"
    assert by_source["k0.jpg"]["boxes"] == {"fullbody": [1.0, 2.0, 30.0, 20.0]} and by_source["k1.jpg"]["boxes"] == {}
    # the train.csv path itself is detected as the Kaggle layout too, and stores nothing new
    again = import_catalogue(src / "train.csv", catalogue, progress=False)
    assert (again.format, again.added, again.unchanged, again.photos_stored) == ("kaggle", 0, 3, 0)


def test_csv_round_trip_with_every_column(tmp_path, catalogue):
    src = tmp_path / "mine"
    photo(src / "pics" / "p1.jpg", 20)
    photo(src / "p2.jpg", 21)
    listing = write_csv(src / "catalogue.csv",
                        ["image", "individual_id", "species", "encounter", "date", "latitude", "longitude"],
                        [["pics/p1.jpg", "HW-001", "Humpback Whale", "enc-9", "2024-07-31", "64.1", "-21.9"],
                         ["p2.jpg", "HW-002", "", "", "2024-08-01T10:00:00Z", "", ""]])
    report = import_catalogue(listing, catalogue, progress=False)
    assert (report.format, report.added, report.bad) == ("csv", 2, [])
    by_id = {r["individual_id"]: r for r in catalogue.records().values()}
    first = by_id["HW-001"]
    assert (first["species"], first["encounter"], first["date"], first["latitude"], first["longitude"]) == (
        "humpback_whale", "enc-9", "2024-07-31", 64.1, -21.9)
    assert by_id["HW-002"]["latitude"] is None and by_id["HW-002"]["date"] == "2024-08-01T10:00:00Z"


def test_bad_rows_are_reported_by_line_and_the_good_ones_go_in(tmp_path, catalogue, monkeypatch, capsys):
    src = tmp_path / "bad"
    photo(src / "ok.jpg", 30)
    photo(src / "ok2.jpg", 31)
    (src / "broken.jpg").write_bytes(b"this is not a photo" * 10)
    (src / "copy.jpg").write_bytes((src / "ok.jpg").read_bytes())
    listing = write_csv(src / "cat.csv", ["image", "individual_id", "date", "latitude", "longitude"], [
        ["ok.jpg", "A1", "", "", ""],             # 2: good
        ["missing.jpg", "A1", "", "", ""],        # 3
        ["broken.jpg", "A1", "", "", ""],         # 4
        ["ok2.jpg", "bad id!", "", "", ""],       # 5
        ["ok2.jpg", "A2", "", "95", "10"],        # 6
        ["ok2.jpg", "A2", "31/07/2024", "", ""],  # 7
        ["ok.jpg", "A1", "", "", ""],             # 8: listed twice
        ["copy.jpg", "A1", "", "", ""],           # 9: the same photo under another name
        ["ok2.jpg", "new_individual", "", "", ""],  # 10
        ["", "A3", "", "", ""],                   # 11
        ["ok2.jpg", "A2", "2024-07-31", "1.5", ""],  # 12
        ["ok2.jpg", "A2", "2024-07-31", "1.5", "2.5"],  # 13: good
    ])
    report = import_catalogue(listing, catalogue, progress=False)
    reasons = {b["line"]: b["reason"] for b in report.as_dict()["bad"]}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert "missing file" in reasons[3] and "undecodable image (not_an_image" in reasons[4]
    assert "bad individual_id 'bad id!'" in reasons[5] and "latitude 95 out of range" in reasons[6]
    assert "bad date '31/07/2024'" in reasons[7] and "listed twice (first at cat.csv:2)" in reasons[8]
    assert "duplicate image: the same photo as cat.csv:2" in reasons[9] and "reserved" in reasons[10]
    assert reasons[11] == "empty image" and "go together" in reasons[12]
    assert report.added == 2 and len(catalogue.records()) == 2
    # the command: a summary with every bad row by line, exit code 1
    from services.cli.main import main
    from services.curation.catalogue import cli

    monkeypatch.setattr(cli, "_store", lambda: catalogue)
    assert main(["catalogue", "import", str(listing), "--no-progress"]) == 1
    out = capsys.readouterr()
    assert "bad row cat.csv:4: undecodable image" in out.err and "0 added" in out.out and "10 bad" in out.out
    # the same photo catalogued under another id is refused
    conflict = write_csv(src / "other.csv", ["image", "individual_id"], [["ok.jpg", "Z9"]])
    assert "already catalogued as A1" in import_catalogue(conflict, catalogue, progress=False).bad[0].reason


def test_reimport_is_idempotent_and_updates_metadata_only(tmp_path, catalogue):
    src = tmp_path / "again"
    photo(src / "x.jpg", 40)
    photo(src / "y.jpg", 41)
    listing = write_csv(src / "cat.csv", ["image", "individual_id"], [["x.jpg", "X"], ["y.jpg", "Y"]])
    import_catalogue(listing, catalogue, progress=False)
    before = {k: v["ETag"] for k, v in objects(catalogue).items()}
    again = import_catalogue(listing, catalogue, progress=False)
    assert (again.added, again.updated, again.unchanged, again.photos_stored) == (0, 0, 2, 0)
    assert {k: v["ETag"] for k, v in objects(catalogue).items()} == before
    write_csv(listing, ["image", "individual_id", "species"], [["x.jpg", "X", "beluga"], ["y.jpg", "Y", ""]])
    changed = import_catalogue(listing, catalogue, progress=False)
    assert (changed.added, changed.updated, changed.unchanged, changed.photos_stored) == (0, 1, 1, 0)
    assert sorted(r["species"] for r in catalogue.records().values()) == ["beluga", "unknown"]


def test_gallery_build_publishes_a_version_the_matcher_loads(tmp_path, stack, catalogue, small_run):
    from services.chain.matcher.matching import Matcher
    from services.core.identification import Tuning
    from services.curation.operations.gallery_versions import GalleryStore

    src = tmp_path / "folders"
    individuals = [f"ind{i:02d}" for i in range(10)]
    seed = 100
    for index, individual in enumerate(individuals):
        for n in range(2 + index % 3):
            seed += 1
            photo(src / individual / f"{n}.jpg", seed)
    import_catalogue(src, catalogue, progress=False)
    (small_run / "folds.csv").write_text("individual_id,fold\n" + "".join(
        f"{ind},{i % 5}\n" for i, ind in enumerate(individuals)))
    settings = dataclasses.replace(stack.settings, gallery_prefix=f"test-galleries-{uuid.uuid4().hex[:8]}")
    store = GalleryStore.from_settings(settings)
    from services.curation.catalogue.gallery_build import publish_catalogue_gallery

    messages = []
    summary = publish_catalogue_gallery(settings, small_run, progress=messages.append, progress_bar=False,
                                        catalogue=catalogue, store=store)
    assert store.current_version() == summary["version"] and summary["previous_version"] is None
    assert (summary["photos"], summary["individuals"], summary["size"]) == (len(catalogue.records()), 10, 10)
    # 10 individuals give fold 0 a handful of validation queries: too few to tune, so the calibrated default
    assert summary["tuning_source"] == "calibrated_default", summary
    assert any("the calibrated default (too few validation queries" in m and "out of fold 0" in m for m in messages)
    matcher = Matcher(settings, store)
    assert matcher.reload() and matcher.state.version == summary["version"]
    assert sorted(matcher.state.gallery.individual_ids) == individuals
    assert list(matcher.state.gallery.model_ids) == [summary["model_id"]]
    assert store.individuals(summary["version"]) == set(individuals)
    # a final fit takes another run's tuning.json as it is
    tuning_file = Tuning(threshold=0.42, weights={"fold-run": 1.0}, validation={"references": "means"}).save(
        tmp_path / "tuning.json")
    second = publish_catalogue_gallery(settings, small_run, tuning_path=tuning_file, progress=messages.append,
                                       progress_bar=False, catalogue=catalogue, store=store)
    assert second["previous_version"] == summary["version"] and store.current_version() == second["version"]
    assert matcher.reload() and matcher.state.identifier.tuning.threshold == pytest.approx(0.42)
    assert matcher.state.identifier.tuning.weights == {summary["model_id"]: 1.0}
