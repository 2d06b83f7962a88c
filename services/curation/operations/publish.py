"""Publish a gallery as a new version of the model store and point readers at it (one call)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from services.core.errors import DataError
from services.core.identification.local_features import BANK_FILE, FeatureBank
from services.curation.operations.gallery_versions import TUNING_FILE, GalleryStore, ModelStoreError


def publish_gallery(store: GalleryStore, gallery, tuning_path: Path | str, *, reason: str,
                    parent: str | None = None, added_sightings: list[str] | None = None,
                    reindexed: bool = False, move_pointer: bool = True, extra_files: Sequence[Path] = ()) -> str:
    """`gallery.save(tmp)` + tuning.json (+ `extra_files`, e.g. the gallery photos' local features) -> upload as a
    new version -> (optionally) move `current` to it.

    A local features bank among `extra_files` (local_features.BANK_FILE) must match the gallery's individuals
    (`check_bank`), else ModelStoreError and nothing is uploaded. The pointer moves only after every file of the
    version is uploaded.
    """
    tuning_path = Path(tuning_path)
    if not tuning_path.is_file():
        raise ModelStoreError(f"tuning file {tuning_path} does not exist")
    for path in extra_files:
        if Path(path).name == BANK_FILE:
            check_bank(path, gallery.individual_ids)
    with tempfile.TemporaryDirectory(prefix="whaleid-gallery-") as tmp:
        out = Path(tmp) / "gallery"
        out.mkdir()
        gallery.save(out)
        shutil.copyfile(tuning_path, out / TUNING_FILE)
        for path in extra_files:
            shutil.copyfile(path, out / Path(path).name)
        ids = [str(i) for i in gallery.individual_ids]
        version = store.publish(out, parent=parent, added_sightings=list(added_sightings or []),
                                individuals=ids, size=len(ids))
    if move_pointer:
        store.set_current(version, reason=reason, reindexed=reindexed)
    return version


def check_bank(path: Path | str, individual_ids) -> FeatureBank:
    """The bank at `path` when it matches a gallery of `individual_ids` (FeatureBank.check_individuals);
    ModelStoreError saying why not (another catalogue's bank, a corrupt file)."""
    try:
        bank = FeatureBank.from_bytes(Path(path).read_bytes())
        bank.check_individuals(individual_ids)
    except DataError as exc:
        raise ModelStoreError(f"{path}: {exc}") from None
    return bank


def directory_bank(directory: Path, settings, without: bool = False) -> Path | None:
    """`whaleid gallery publish DIR`'s local features: DIR/local_features.bin when there (published with the
    version), None when absent and not wanted; ModelStoreError when re-ranking is wanted (the setting
    `rerank_local_features`, or DIR/tuning.json's `rerank`) and DIR has none, unless `without`."""
    from services.core.identification.tuning import Tuning
    from services.curation.catalogue.gallery_features import wanted

    path = Path(directory) / BANK_FILE
    if path.is_file():
        return path
    if not without and wanted(settings, Tuning.load(Path(directory) / TUNING_FILE)):
        raise ModelStoreError(
            f"{directory} has no {BANK_FILE} (the gallery photos' keypoints) but re-ranking is wanted (the setting "
            "rerank_local_features is on, or its tuning.json has `rerank`): `whaleid gallery build` makes one from "
            "the catalogue; or publish with --without-local-features and the matcher ranks by the embedding alone")
    return None
