"""`whaleid reindex --re-embed --run RUN`: rebuild every embedding of the served gallery when the model changes.

A plain `whaleid reindex` recomputes nothing: confirmed sightings enter with the embedding the matcher stored at
ingest, made by the model that served then. When the model changes (a new training run), those embeddings and
the catalogue's are of another model, so everything is embedded again with RUN's model:

  1. the catalogue (services.curation.catalogue.photo_bucket: the photos `whaleid catalogue import` put in S3) is
     embedded and the threshold re-tuned exactly as `whaleid gallery build` does (`publish_catalogue_gallery`, the same
     options: `tuning_run`, `tuning_path`), or, with `keep_threshold`, the served version's tuning.json is kept
     as it is (its blend weights now name RUN's model);
  2. every confirmed sighting (`confirmed_sightings`: `confirm`/`new` decisions in Redis) is embedded from its
     photo in S3 (the `key`/`bucket` of its `sighting:<id>` hash; `uploads/<id>.<ext>` of the sightings bucket
     when the hash expired), cropped as the live chain cropped it (the worker's `crop_box` stored with its
     embedding, else the uploader's, else the whole photo), and appended as the row `sighting/<id>` with the
     metadata a plain re-index writes (so a later plain `whaleid reindex` finds it already there);
  3. merges and renames (services.curation.operations.identities) relabel every row, as a plain re-index does;
  4. the result is published as a new version (parent: the served one) and the pointer moves (`reindexed`).

A confirmed sighting whose photo cannot be read is reported in `skipped` with the reason, never dropped
silently; the others are published. Progress bars on stderr for the downloads and each embedding pass.
Serve RUN's model too (`whaleid export`, `whaleid model-repo build`, Triton reload): the matcher parks
embeddings of a model the gallery was not built with until it does.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

from services.core.errors import ConfigError, DataError
from services.core.progress import ProgressBar
from services.curation.catalogue.gallery_build import Photos, embed_photos, publish_catalogue_gallery
from services.curation.operations import records
from services.curation.operations.confirmations import confirmed_sightings
from services.curation.operations.reindex import UNKNOWN_SPECIES, sighting_image
from services.curation.operations.sighting_photos import sighting_photo

log = logging.getLogger(__name__)
CROP = "crop"


class SightingPhotos(Photos):
    """Photos of confirmed sightings: each is cropped by its own box (the chain's crop), whatever the run's
    evaluation box source."""

    def box_list(self, source: str | None) -> list:
        return [b.get(CROP) for b in self.boxes]


def confirmed_photos(redis, s3, sightings_bucket: str, species_of: dict[str, str], cache_dir: Path,
                     skipped: dict[str, str], progress_bar: bool = False) -> tuple[SightingPhotos | None, list[dict]]:
    """The confirmed sightings' photos downloaded into `cache_dir` (None when there is none) and their row
    metadata; sightings that cannot be read go to `skipped` (id -> reason)."""
    confirmed = confirmed_sightings(redis)
    cache_dir.mkdir(parents=True, exist_ok=True)
    bar = ProgressBar("downloading confirmed sightings", len(confirmed), enabled=progress_bar)
    images, ids, species, paths, boxes, metadata = [], [], [], [], [], []
    for conf, version_at_confirmation in confirmed:
        bar.update()
        sighting_id = conf.sighting_id
        try:
            path, box = sighting_photo(redis, s3, sighting_id, sightings_bucket, cache_dir)
        except DataError as exc:
            skipped[sighting_id] = str(exc)
            log.error("re-embed: sighting %s not added: %s", sighting_id, exc)
            continue
        kind = species_of.get(conf.individual_id) or records.read_species_hint(redis, sighting_id) or UNKNOWN_SPECIES
        species_of.setdefault(conf.individual_id, kind)
        images.append(sighting_image(sighting_id))
        ids.append(conf.individual_id)
        species.append(kind)
        paths.append(path)
        boxes.append({CROP: box} if box else {})
        metadata.append({"sighting_id": sighting_id, "action": conf.action, "researcher": conf.researcher,
                         "confirmed_at": conf.confirmed_at, "confirmed_against": version_at_confirmation,
                         "crop_box": box})
    if not images:
        return None, []
    return SightingPhotos(images=images, individual_ids=ids, species=species, paths=paths, boxes=boxes), metadata


def _served_tuning(store, cache_dir: Path) -> tuple[Path, str]:
    """The served version's tuning.json, saved under cache_dir, and the version's name."""
    from services.curation.operations.gallery_versions import TUNING_FILE, ModelStoreError

    version = store.current_version()
    if version is None:
        raise ModelStoreError("--keep-threshold: no gallery version is served yet, so there is no threshold to "
                              "keep (run without it to tune one)")
    try:
        data = store._get_bytes(store._key(version, TUNING_FILE))
    except FileNotFoundError:
        raise ModelStoreError(f"--keep-threshold: gallery version {version} has no {TUNING_FILE}") from None
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{version}-{TUNING_FILE}"
    path.write_bytes(data)
    return path, version


def re_embed(settings, run_dir: Path, *, keep_threshold: bool = False, tuning_path: Path | None = None,
             tuning_run: Path | None = None, progress: Callable[[str], None] = log.info, progress_bar: bool = True,
             move_pointer: bool = True, catalogue=None, store=None, redis=None, s3=None) -> dict:
    """Re-embed the catalogue and every confirmed sighting with `run_dir`'s model; publish and serve the result.

    Returns the `gallery build` summary plus `re_embedded` (True), `sightings_added`, `skipped` ({sighting id:
    reason}) and `previous_model_ids` (of the version served before)."""
    import tempfile

    from services.core.metrics import REINDEX_LAST_SUCCESS
    from services.curation.operations.gallery_versions import GalleryStore, s3_client

    if keep_threshold and (tuning_path or tuning_run):
        raise ConfigError("--keep-threshold takes the served version's threshold: it cannot be combined with "
                          "--tuning or --tuning-run")
    start = time.perf_counter()
    store = store or GalleryStore.from_settings(settings)
    s3 = s3 or s3_client(settings)
    if redis is None:
        import redis as redis_lib

        if not settings.redis_url:
            raise ConfigError("redis_url is not set (WHALEID_REDIS_URL, or `whaleid stack up` for the local stack)")
        redis = redis_lib.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    previous = store.current_version()
    previous_model_ids = _model_ids(store, previous)
    skipped: dict[str, str] = {}
    added: list[str] = []

    def add_confirmed(gallery, embedder, tmp: Path):
        species_of: dict[str, str] = {}
        for ind, kind in zip(gallery.individual_ids, gallery.species, strict=True):
            species_of.setdefault(ind, kind)
        photos, metadata = confirmed_photos(redis, s3, settings.sightings_bucket, species_of, tmp / "sightings",
                                            skipped, progress_bar)
        if photos is None:
            progress("no confirmed sighting to re-embed")
        else:
            progress(f"embedding {len(photos.images)} confirmed sighting(s) with {embedder.model_id}")
            embeddings = embed_photos(embedder, photos, progress_bar)
            gallery = gallery.add(np.asarray(embeddings, dtype=np.float32), photos.individual_ids, photos.species,
                                  photos.images, metadata)
            added.extend(image[len("sighting/"):] for image in photos.images)
        gallery, relabelled = _apply_merges(gallery, redis)
        return gallery, list(added), {"sightings_added": len(added), "relabelled": relabelled}, photos

    with tempfile.TemporaryDirectory(prefix="whaleid-re-embed-") as tmp:
        if keep_threshold:
            tuning_path, _ = _served_tuning(store, Path(tmp))
            progress(f"keeping the threshold of the served version {previous}")
        summary = publish_catalogue_gallery(
            settings, Path(run_dir), tuning_path=tuning_path, tuning_run=tuning_run, progress=progress,
            progress_bar=progress_bar, move_pointer=move_pointer, catalogue=catalogue, store=store,
            extend=add_confirmed, reindexed=True,
            reason=f"reindex --re-embed: catalogue + confirmed sightings with {Path(run_dir).name}")
    if keep_threshold:
        summary.update(tuning_source="kept", tuning_file=None)
    summary.update(re_embedded=True, skipped=skipped, previous_model_ids=previous_model_ids,
                   seconds=round(time.perf_counter() - start, 2))
    summary.setdefault("sightings_added", len(added))
    REINDEX_LAST_SUCCESS.set(time.time())
    log.info("re-embed done: %s -> %s with %s, %d photos + %d confirmed sightings, %d skipped", previous,
             summary["version"], summary["model_id"], summary["photos"], len(added), len(skipped))
    return summary


def _apply_merges(gallery, redis):
    """Rows labelled with the live id of their original id (merges and renames, as a plain re-index does)."""
    try:
        from services.curation.operations import identities
    except ImportError:  # merges not available in this tree
        return gallery, {}
    return identities.relabel_gallery(gallery, identities.read_aliases(redis))


def _model_ids(store, version: str | None) -> list[str]:
    if not version:
        return []
    try:
        manifest = json.loads(store._get_bytes(store._key(version, "manifest.json")))
    except (FileNotFoundError, ValueError):
        return []
    return list(manifest.get("model_ids") or [])
