"""Re-indexing: the current gallery version + confirmed sightings -> a new version, then move the pointer.

Nothing is recomputed: each confirmed sighting enters with the embedding the matcher stored at ingest
(`embedding:<id>`). A sighting is in a gallery when its image id `sighting/<id>` is, so re-running is
idempotent and "since that version" is exact. Sightings that cannot enter (embedding missing or of another
dimension, or made by a model the gallery was not built with) are reported with the reason, never silently
dropped; the run still publishes the others.

Model versions: when the gallery's manifest lists its `model_ids`, a stored embedding enters only when its
`model_version` matches them (services.core.model_versions: the version or its build id named by the gallery, or
the export model ids the worker registered for that version equal to the gallery's); an embedding without a
model version then does not enter. A gallery without `model_ids` accepts every embedding, as before.

Merges and renames (services.curation.operations.identities): every row, old and new, is labelled with the live id of its
original id, so a version is published when only a merge, a rename or an undo happened (`relabelled`).

Local features (re-ranking, docs/identification.md): when the parent version has a bank (local_features.bin), the
new version's bank is the parent's plus the added sightings' keypoints, from their photos in S3 cropped as the
worker cropped them (services.curation.operations.reindex_features: at most 8 photos per individual, the parent's
first; the report's `local_features` says which sightings entered it and why others did not).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from services.core import keys
from services.core.errors import DataError
from services.core.identification.local_features import FeatureBank
from services.core.metrics import REINDEX_LAST_SUCCESS
from services.core.model_versions import VersionChecker
from services.core.settings import Settings
from services.curation.operations import identities, records
from services.curation.operations.confirmations import confirmed_sightings
from services.curation.operations.gallery_versions import GalleryStore, ModelStoreError
from services.curation.operations.publish import TUNING_FILE, publish_gallery

log = logging.getLogger(__name__)

IMAGE_PREFIX = "sighting/"
UNKNOWN_SPECIES = "unknown"


@dataclass
class ReindexReport:
    previous_version: str
    new_version: str | None  # None: nothing new (dry run, or no confirmed sighting to add)
    added: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # sighting id -> reason
    size: int = 0
    individuals: int = 0
    new_individuals: list[str] = field(default_factory=list)
    relabelled: dict[str, int] = field(default_factory=dict)  # "old -> new" id: gallery rows (merges, renames)
    dry_run: bool = False
    seconds: float = 0.0
    # the new version's local features when the parent has them: {"photos", "added": [sighting ids], "skipped":
    # {sighting id: reason}, "dropped": [individuals no longer in the gallery]}; None when the parent has none
    local_features: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def sighting_image(sighting_id: str) -> str:
    return IMAGE_PREFIX + sighting_id


def reindex(store: GalleryStore, redis, *, dry_run: bool = False, s3=None,
            sightings_bucket: str = Settings.sightings_bucket) -> ReindexReport:
    """`s3` (default: the store's client) and `sightings_bucket` reach the added sightings' photos, for their
    keypoints when the parent version has local features."""
    from services.core.identification.gallery import Gallery

    start = time.perf_counter()
    pointer = store.pointer()
    if pointer is None:
        raise ModelStoreError("no gallery version to re-index from: publish a first one "
                              "(`whaleid gallery publish DIR`, or `whaleid demo` does it)")
    with tempfile.TemporaryDirectory(prefix="whaleid-reindex-") as tmp:
        log.info("re-index: downloading gallery version %s", pointer.version)
        current_dir = store.download(pointer.version, Path(tmp) / "current")
        gallery = Gallery.load(current_dir)
        tuning_path = current_dir / TUNING_FILE
        if not tuning_path.is_file():
            raise ModelStoreError(f"gallery version {pointer.version} has no {TUNING_FILE}")
        report = ReindexReport(previous_version=pointer.version, new_version=None, dry_run=dry_run)
        aliases = identities.read_aliases(redis)  # merges and renames (services.curation.operations.identities)
        gallery, report.relabelled = identities.relabel_gallery(gallery, aliases)
        rows = _pending_rows(gallery, redis, report, aliases)
        report.size = len(gallery) + len(report.added)
        report.individuals = len(set(gallery.individual_ids) | set(rows[1] if rows else []))
        if (rows or report.relabelled) and not dry_run:
            if rows:
                embeddings, ids, species, images, metadata = rows
                gallery = gallery.add(np.stack(embeddings), ids, species, images, metadata)
            relabelled = f", {sum(report.relabelled.values())} row(s) relabelled" if report.relabelled else ""
            bank = FeatureBank.load(current_dir)  # the photos' local features (re-ranking), when the parent has them
            extra_files = [] if bank is None else [_next_bank(bank, gallery, report, rows, aliases, redis,
                                                              s3 or store.client, sightings_bucket, Path(tmp))]
            report.new_version = publish_gallery(
                store, gallery, tuning_path, parent=pointer.version, added_sightings=report.added,
                reindexed=True, reason=f"reindex: +{len(report.added)} confirmed sighting(s){relabelled}",
                extra_files=extra_files)
        elif not dry_run:
            store.set_current(pointer.version, reason="reindex: no new confirmed sightings", reindexed=True)
    report.seconds = round(time.perf_counter() - start, 3)
    if not dry_run:
        REINDEX_LAST_SUCCESS.set(time.time())
    log.info("re-index %s: %s -> %s, %d added, %d skipped, %d embeddings, %d individuals",
             "(dry run)" if dry_run else "done", report.previous_version, report.new_version or "(unchanged)",
             len(report.added), len(report.skipped), report.size, report.individuals)
    return report


def _next_bank(bank, gallery, report: ReindexReport, rows, aliases, redis, s3, sightings_bucket: str,
               tmp: Path) -> Path:
    """The new version's local features saved under tmp/next (reindex_features.next_bank); the report says what
    entered."""
    from services.curation.operations.reindex_features import next_bank

    sightings = list(zip(report.added, rows[1], strict=True)) if rows else []
    update = next_bank(bank, sightings, set(map(str, gallery.individual_ids)), redis, s3, sightings_bucket, aliases)
    report.local_features = update.report()
    log.info("re-index: local features of %d photos (%d added sighting(s), %d without, %d individual(s) dropped)",
             len(update.bank), len(update.added), len(update.skipped), len(update.dropped))
    folder = tmp / "next"
    folder.mkdir(exist_ok=True)
    return update.bank.save(folder)


def _pending_rows(gallery, redis, report: ReindexReport, aliases=None):
    """The confirmed sightings not yet in `gallery`, as rows to add (None when there are none), each under the
    live id of its decision's id (`aliases`: merges and renames)."""
    included = set(gallery.images)
    species_of = {}
    for ind, sp in zip(gallery.individual_ids, gallery.species, strict=True):
        species_of.setdefault(ind, sp)
    confirmed = [(c, v) for c, v in confirmed_sightings(redis) if sighting_image(c.sighting_id) not in included]
    log.info("re-index: %d confirmed sighting(s) not yet in version %s", len(confirmed), report.previous_version)
    embeddings, ids, species, images, metadata = [], [], [], [], []
    checker = VersionChecker(redis) if gallery.model_ids else None
    for number, (conf, version_at_confirmation) in enumerate(confirmed, 1):
        try:
            vector = records.read_embedding(redis, conf.sighting_id)
        except DataError as exc:
            report.skipped[conf.sighting_id] = str(exc)
            continue
        if vector.shape[0] != gallery.dimension:
            report.skipped[conf.sighting_id] = (f"embedding dimension {vector.shape[0]} != gallery dimension "
                                                f"{gallery.dimension} (embedded by another model)")
            continue
        if checker is not None:
            check = checker.check(_stored_model_version(redis, conf.sighting_id), gallery.model_ids)
            if not check.ok:
                report.skipped[conf.sighting_id] = f"embedded by another model ({check.reason}): {check.detail}"
                continue
        individual = identities.resolve_in(aliases or {}, conf.individual_id)
        kind = species_of.get(individual) or records.read_species_hint(redis, conf.sighting_id) \
            or UNKNOWN_SPECIES
        species_of.setdefault(individual, kind)
        embeddings.append(vector)
        ids.append(individual)
        species.append(kind)
        images.append(sighting_image(conf.sighting_id))
        metadata.append(identities.row_metadata(
            {"sighting_id": conf.sighting_id, "action": conf.action, "researcher": conf.researcher,
             "confirmed_at": conf.confirmed_at, "confirmed_against": version_at_confirmation},
            conf.individual_id, individual))
        report.added.append(conf.sighting_id)
        if conf.action == "new" and individual not in report.new_individuals:
            report.new_individuals.append(individual)
        if number % 500 == 0:
            log.info("re-index: read %d / %d confirmed embeddings", number, len(confirmed))
    for sighting_id, reason in report.skipped.items():
        log.error("re-index: sighting %s not added: %s", sighting_id, reason)
    return (embeddings, ids, species, images, metadata) if ids else None


def _stored_model_version(redis, sighting_id: str) -> str:
    """The `model_version` of the stored `embedding:<id>` record ("" for a bare list or raw bytes)."""
    raw = redis.get(keys.embedding_key(sighting_id))
    data = raw.encode() if isinstance(raw, str) else raw
    if not data or data.lstrip()[:1] != b"{":
        return ""
    try:
        value = json.loads(data)
    except ValueError:
        return ""
    return str(value.get("model_version") or "") if isinstance(value, dict) else ""
