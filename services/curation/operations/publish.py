"""Publish a gallery as a new version of the model store and point readers at it (one call)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from services.curation.operations.gallery_versions import TUNING_FILE, GalleryStore, ModelStoreError


def publish_gallery(store: GalleryStore, gallery, tuning_path: Path | str, *, reason: str,
                    parent: str | None = None, added_sightings: list[str] | None = None,
                    reindexed: bool = False, move_pointer: bool = True, extra_files: Sequence[Path] = ()) -> str:
    """`gallery.save(tmp)` + tuning.json (+ `extra_files`, e.g. the gallery photos' local features) -> upload as a
    new version -> (optionally) move `current` to it.

    The pointer moves only after every file of the version is uploaded.
    """
    tuning_path = Path(tuning_path)
    if not tuning_path.is_file():
        raise ModelStoreError(f"tuning file {tuning_path} does not exist")
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
