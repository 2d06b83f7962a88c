"""`import_catalogue(src, store)`: read a source (services.curation.catalogue.sources), check each photo's content, store
the new photos and records (services.curation.catalogue.photo_bucket). Bad rows are reported and skipped; the good
ones go in."""

from __future__ import annotations

import hashlib
import io
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from services.core import imaging
from services.core.progress import ProgressBar
from services.curation.catalogue.photo_bucket import CatalogueStore, now
from services.curation.catalogue.sources import BadRow, SourceRow, read_source

log = logging.getLogger(__name__)
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
RECORD_FIELDS = ("individual_id", "species", "encounter", "date", "latitude", "longitude", "boxes", "viewpoint")


@dataclass
class ImportReport:
    source: str
    format: str
    rows: int = 0  # rows read (good + bad)
    added: int = 0  # new records
    updated: int = 0  # records whose metadata changed (same photo, same individual)
    unchanged: int = 0  # already catalogued as they are
    photos_stored: int = 0  # objects written to S3
    individuals: int = 0  # in the catalogue after the import
    catalogue_photos: int = 0  # records in the catalogue after the import
    bad: list[BadRow] = field(default_factory=list)
    seconds: float = 0.0
    warnings: list[BadRow] = field(default_factory=list)  # imported all the same (an unreadable viewpoint)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["bad"] = [b.as_dict() for b in sorted(self.bad, key=lambda b: (b.where.split(":")[0], b.line))]
        data["warnings"] = [w.as_dict() for w in self.warnings]
        return data


def import_catalogue(src: Path | str, store: CatalogueStore, fmt: str | None = None, progress: bool = True,
                     dry_run: bool = False) -> ImportReport:
    start = time.perf_counter()
    fmt, rows, bad = read_source(Path(src), fmt)
    report = ImportReport(source=str(src), format=fmt, rows=len(rows) + len(bad), bad=list(bad))
    records = store.records()
    changed = False
    seen: dict[str, SourceRow] = {}
    bar = ProgressBar(f"importing {len(rows)} photo(s)", len(rows), enabled=progress)
    for row in rows:
        bar.update()
        if row.warning:
            report.warnings.append(BadRow(row.where, row.line, f"{row.warning}; imported with the viewpoint unknown"))
        try:
            data = row.path.read_bytes()
        except OSError as exc:
            report.bad.append(BadRow(row.where, row.line, f"cannot read {row.path}: {exc}"))
            continue
        photo_id = hashlib.sha256(data).hexdigest()
        try:
            pixels = imaging.decode_image(data)
            ext = EXTENSIONS[Image.open(io.BytesIO(data)).format]
        except imaging.ImageRejected as exc:
            report.bad.append(BadRow(row.where, row.line, f"undecodable image ({exc.reason}: {exc.detail})"))
            continue
        if photo_id in seen:
            report.bad.append(BadRow(row.where, row.line, f"duplicate image: the same photo as {seen[photo_id].where}"))
            continue
        seen[photo_id] = row
        record = {"photo_id": photo_id, "key": store.photo_key(row.individual_id, photo_id, ext),
                  "individual_id": row.individual_id, "species": row.species, "encounter": row.encounter,
                  "date": row.date, "latitude": row.latitude, "longitude": row.longitude, "boxes": row.boxes,
                  "viewpoint": row.viewpoint,
                  "width": int(pixels.shape[1]), "height": int(pixels.shape[0]), "source": row.source_name,
                  "imported_at": now()}
        old = records.get(photo_id)
        if old is not None and old["individual_id"] != row.individual_id:
            report.bad.append(BadRow(row.where, row.line, f"this photo is already catalogued as "
                                                          f"{old['individual_id']} ({old['key']})"))
            continue
        if old is not None and all(old.get(k) == record[k] for k in RECORD_FIELDS):
            report.unchanged += 1
            continue
        if not dry_run and store.put_photo(record["key"], data, ext):
            report.photos_stored += 1
        if old is not None:
            record["imported_at"] = old.get("imported_at", record["imported_at"])
            report.updated += 1
        else:
            report.added += 1
        records[photo_id] = record
        changed = True
    if changed and not dry_run:
        store.write_records(records)
    report.catalogue_photos = len(records)
    report.individuals = len({r["individual_id"] for r in records.values()})
    report.seconds = round(time.perf_counter() - start, 3)
    log.info("catalogue import %s (%s): %d added, %d updated, %d unchanged, %d bad row(s); catalogue: %d photos "
             "of %d individuals", src, fmt, report.added, report.updated, report.unchanged, len(report.bad),
             report.catalogue_photos, report.individuals)
    return report
