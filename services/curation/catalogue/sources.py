"""Reading a catalogue to import: three layouts, every row validated, bad rows reported by line with the reason.

Formats (`detect_format` picks one when none is given):
  folders  SRC/<individual_id>/*.jpg|jpeg|png|webp (one folder per individual; the "line" is the file's path)
  kaggle   a Happywhale/Kaggle folder: train.csv (image,species,individual_id) + train_images/, optional
           boxes*.csv (image,source,x0,y0,x1,y1); SRC is the folder or its train.csv
  csv      a CSV of image,individual_id[,species][,encounter][,date][,latitude,longitude][,viewpoint]; images
           relative to the CSV's folder (absolute paths are taken as they are)
Every layout: each photo's viewpoint hint (services.core.identification.viewpoint) is the `viewpoint` column
(kaggle and csv; left/right/other free text) when the row has one, else a left/right word in the file name; an
unreadable value leaves it unknown with a warning (`SourceRow.warning`), never a bad row.

Row checks here (no S3): image named and present, individual id valid, species (Kaggle misspellings fixed),
date ISO 8601, latitude and longitude both or neither and in range, image listed twice. Content checks
(decodable image, same photo twice) are in `services.curation.catalogue.importer`.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from services.core.errors import DataError
from services.core.identification.viewpoint import COLUMN as VIEWPOINT_COLUMN
from services.core.identification.viewpoint import viewpoint_from_name, viewpoint_hint

FORMATS = ("folders", "kaggle", "csv")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
RESERVED_IDS = ("new_individual",)
UNKNOWN_SPECIES = "unknown"
CSV_REQUIRED = ("image", "individual_id")
KAGGLE_COLUMNS = ("image", "species", "individual_id")
BOX_COLUMNS = ("image", "source", "x0", "y0", "x1", "y1")


@dataclass
class SourceRow:
    """One photo to import, as read from the source (validated except for its content)."""

    where: str  # "train.csv:12" or "folders:<id>/<file>": how bad rows are reported
    line: int  # line number in the CSV (header = 1), or the file's position in the folder walk
    path: Path
    individual_id: str
    species: str = UNKNOWN_SPECIES
    encounter: str = ""
    date: str = ""
    latitude: float | None = None
    longitude: float | None = None
    boxes: dict[str, list[float]] = field(default_factory=dict)  # box source -> [x0, y0, x1, y1]
    source_name: str = ""  # the image as the source names it
    viewpoint: str | None = None  # left / right / other; None = unknown
    warning: str = ""  # why the viewpoint column could not be read (the row is imported all the same)


@dataclass
class BadRow:
    where: str
    line: int
    reason: str

    def as_dict(self) -> dict:
        return {"where": self.where, "line": self.line, "reason": self.reason}


def detect_format(src: Path) -> str:
    src = Path(src)
    if src.is_dir():
        return "kaggle" if (src / "train.csv").is_file() and (src / "train_images").is_dir() else "folders"
    if src.is_file():
        header = _header(src)
        if set(KAGGLE_COLUMNS) <= set(header) and not set(header) & {"encounter", "date", "latitude", "longitude"} \
                and src.name == "train.csv" and (src.parent / "train_images").is_dir():
            return "kaggle"
        return "csv"
    raise DataError(f"catalogue source {src} does not exist")


def read_source(src: Path, fmt: str | None = None) -> tuple[str, list[SourceRow], list[BadRow]]:
    """(format, good rows, bad rows) of a catalogue source."""
    src = Path(src)
    fmt = fmt or detect_format(src)
    if fmt not in FORMATS:
        raise DataError(f"catalogue format {fmt!r} unknown; expected one of {', '.join(FORMATS)}")
    if fmt == "folders":
        if not src.is_dir():
            raise DataError(f"--format folders needs a directory, {src} is not one")
        rows, bad = _read_folders(src)
    elif fmt == "kaggle":
        csv_path = src / "train.csv" if src.is_dir() else src
        rows, bad = _read_csv(csv_path, csv_path.parent / "train_images", kaggle=True)
        _attach_boxes(csv_path.parent, rows, bad)
    else:
        if not src.is_file():
            raise DataError(f"--format csv needs a CSV file, {src} is not one")
        rows, bad = _read_csv(src, src.parent, kaggle=False)
    _flag_repeated_names(rows, bad)
    return fmt, [r for r in rows if r is not None], bad


def check_individual_id(value: str) -> str | None:
    """The reason `value` is not a valid individual id, or None."""
    if not value:
        return "empty individual_id"
    if value.lower() in RESERVED_IDS:
        return f"individual_id {value!r} is reserved"
    if not ID_PATTERN.match(value):
        return (f"bad individual_id {value!r}: 1-128 characters, letters, digits and _ . : - only, starting with "
                "a letter or digit")
    return None


def _header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return [c.strip() for c in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def _read_folders(src: Path) -> tuple[list[SourceRow], list[BadRow]]:
    rows, bad = [], []
    number = 0
    for path in sorted(src.rglob("*")):
        if path.is_dir() or any(part.startswith(".") for part in path.relative_to(src).parts):
            continue
        number += 1
        rel = path.relative_to(src).as_posix()
        where = f"{src.name}/{rel}"
        parts = path.relative_to(src).parts
        if len(parts) != 2:
            bad.append(BadRow(where, number, "not directly in an individual's folder (SRC/<individual_id>/photo)"))
            continue
        if path.suffix.lower() not in PHOTO_SUFFIXES:
            bad.append(BadRow(where, number, f"not a photo file ({', '.join(PHOTO_SUFFIXES)})"))
            continue
        reason = check_individual_id(parts[0])
        if reason:
            bad.append(BadRow(where, number, reason))
            continue
        rows.append(SourceRow(where, number, path, parts[0], source_name=rel, viewpoint=viewpoint_from_name(path.name)))
    return rows, bad


def _read_csv(csv_path: Path, image_root: Path, kaggle: bool) -> tuple[list[SourceRow], list[BadRow]]:
    from training.data import LABEL_FIXES

    rows: list[SourceRow] = []
    bad: list[BadRow] = []
    try:
        fh = open(csv_path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DataError(f"cannot read {csv_path}: {exc}") from None
    with fh:
        reader = csv.DictReader(fh)
        header = [c.strip() for c in reader.fieldnames or []]
        required = KAGGLE_COLUMNS if kaggle else CSV_REQUIRED
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
        if not kaggle and ("latitude" in header) != ("longitude" in header):
            raise DataError(f"{csv_path}: latitude and longitude go together (header: {', '.join(header)})")
        for line, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{csv_path.name}:{line}"
            reason, parsed = _parse_row(row, image_root, kaggle, LABEL_FIXES)
            if reason:
                bad.append(BadRow(where, line, reason))
                continue
            rows.append(SourceRow(where=where, line=line, **parsed))
    return rows, bad


def _parse_row(row: dict, image_root: Path, kaggle: bool, fixes: dict) -> tuple[str | None, dict]:
    image = row.get("image", "")
    if not image:
        return "empty image", {}
    path = Path(image) if Path(image).is_absolute() else image_root / image
    if not path.is_file():
        return f"missing file {path}", {}
    individual = row.get("individual_id", "")
    reason = check_individual_id(individual)
    if reason:
        return reason, {}
    species = row.get("species", "").lower().replace(" ", "_") or UNKNOWN_SPECIES
    species = fixes.get(species, species)
    if not re.match(r"^[a-z0-9_.-]{1,64}$", species):
        return f"bad species {row.get('species')!r}", {}
    parsed = {"path": path, "individual_id": individual, "species": species, "source_name": image,
              "encounter": row.get("encounter", "")}
    parsed["viewpoint"], parsed["warning"] = viewpoint_hint(row.get(VIEWPOINT_COLUMN), image)
    parsed["warning"] = parsed["warning"] or ""
    if kaggle:
        return None, parsed
    if parsed["encounter"] and len(parsed["encounter"]) > 128:
        return "encounter longer than 128 characters", {}
    text = row.get("date", "")
    if text:
        try:
            (datetime.fromisoformat(text.replace("Z", "+00:00")) if "T" in text or " " in text
             else date.fromisoformat(text))
        except ValueError:
            return f"bad date {text!r} (ISO 8601: 2024-07-31 or 2024-07-31T14:05:00Z)", {}
    parsed["date"] = text
    lat, lon = row.get("latitude", ""), row.get("longitude", "")
    if bool(lat) != bool(lon):
        return "latitude and longitude go together (one is empty)", {}
    if lat:
        try:
            latitude, longitude = float(lat), float(lon)
        except ValueError:
            return f"bad coordinates {lat!r}, {lon!r} (decimal degrees)", {}
        if not (math.isfinite(latitude) and -90 <= latitude <= 90):
            return f"latitude {lat} out of range [-90, 90]", {}
        if not (math.isfinite(longitude) and -180 <= longitude <= 180):
            return f"longitude {lon} out of range [-180, 180]", {}
        parsed["latitude"], parsed["longitude"] = latitude, longitude
    return None, parsed


def _attach_boxes(root: Path, rows: list[SourceRow], bad: list[BadRow]) -> None:
    """Boxes of the Kaggle layout's boxes*.csv onto the rows of their images (bad box rows are reported)."""
    by_image = {r.source_name: r for r in rows}
    for path in sorted(root.glob("boxes*.csv")):
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not set(BOX_COLUMNS) <= set(reader.fieldnames or []):
                bad.append(BadRow(path.name, 1, f"box file without the columns {', '.join(BOX_COLUMNS)}"))
                continue
            for line, row in enumerate(reader, start=2):
                target = by_image.get((row.get("image") or "").strip())
                if target is None:
                    continue  # a test image's box, or a row already reported bad
                try:
                    box = [float(row[c]) for c in ("x0", "y0", "x1", "y1")]
                except (TypeError, ValueError):
                    bad.append(BadRow(f"{path.name}:{line}", line, "box coordinates are not numbers"))
                    continue
                if not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
                    bad.append(BadRow(f"{path.name}:{line}", line, f"bad box {box} (x1 > x0, y1 > y0)"))
                    continue
                target.boxes[(row.get("source") or "").strip() or "box"] = box


def _flag_repeated_names(rows: list, bad: list[BadRow]) -> None:
    first: dict[str, SourceRow] = {}
    for index, row in enumerate(rows):
        key = str(row.path.resolve())
        if key in first:
            bad.append(BadRow(row.where, row.line, f"image {row.source_name} listed twice (first at "
                                                   f"{first[key].where})"))
            rows[index] = None
        else:
            first[key] = row
