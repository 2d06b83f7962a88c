"""Loading and validating a Happywhale-layout data set (real Kaggle or `whaleid synth`), and the fold split.

`load_dataset(DIR)` reads train.csv, the test image list (sample_submission.csv, else test_images/), the box
files (boxes.csv and boxes_*.csv) and test_truth.csv when present. Every problem is collected and reported in
one DataError naming the file, line and reason (missing column, missing image file, empty id, duplicate row,
bad box); nothing is dropped silently. The Kaggle species misspellings are fixed and counted in the log.
Each train row's viewpoint hint (services.core.identification.viewpoint: an optional `viewpoint` column, else a
left/right word in the file name) is `TrainRow.viewpoint`; an unreadable value is a warning, the hint unknown.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from services.core import imaging
from services.core.errors import DataError
from services.core.identification.viewpoint import COLUMN as VIEWPOINT_COLUMN
from services.core.identification.viewpoint import viewpoint_hint

log = logging.getLogger(__name__)

NEW_INDIVIDUAL = "new_individual"
LABEL_FIXES = {
    "bottlenose_dolpin": "bottlenose_dolphin",
    "kiler_whale": "killer_whale",
    "globis": "short_finned_pilot_whale",
    "pilot_whale": "short_finned_pilot_whale",
}
TRAIN_COLUMNS = ("image", "species", "individual_id")
TRUTH_COLUMNS = ("image", "individual_id", "species")
SUBMISSION_COLUMNS = ("image", "predictions")
BOX_COLUMNS = ("image", "source", "x0", "y0", "x1", "y1")
MAX_REPORTED = 25

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class TrainRow:
    image: str
    species: str
    individual_id: str
    viewpoint: str | None = None  # left / right / other, None when unknown (viewpoint.viewpoint_hint)


@dataclass(frozen=True)
class TruthRow:
    image: str
    individual_id: str  # NEW_INDIVIDUAL for animals absent from train
    species: str


@dataclass
class HappywhaleData:
    root: Path
    train: list[TrainRow]
    test_images: list[str]
    boxes: dict[str, dict[str, Box]]  # image -> source -> (x0, y0, x1, y1)
    truth: list[TruthRow] | None = None
    label_fixes: dict[str, int] = field(default_factory=dict)  # "wrong->right" -> rows fixed

    def __post_init__(self) -> None:
        self._train_images = {row.image for row in self.train}

    @property
    def individual_ids(self) -> list[str]:
        """One id per train image (the input of split_folds)."""
        return [row.individual_id for row in self.train]

    @property
    def box_sources(self) -> list[str]:
        return sorted({source for per_image in self.boxes.values() for source in per_image})

    def image_path(self, image: str) -> Path:
        split = "train_images" if image in self._train_images else "test_images"
        return self.root / split / image

    def boxes_for(self, image: str, source: str | None = None):
        """The image's box from `source` (None when it has none); without a source, {source: box}."""
        per_image = self.boxes.get(image, {})
        return dict(per_image) if source is None else per_image.get(source)

    def eval_box(self, image: str, source: str | None) -> Box | None:
        """The evaluation crop: the box of `source` when the image has one, else None (the whole image)."""
        return self.boxes_for(image, source) if source else None

    def load_image(self, image: str) -> np.ndarray:
        return imaging.load_image_file(self.image_path(image))

    def eval_input(self, image: str, size: int, box_source: str | None) -> np.ndarray:
        """float32 (size, size, 3) in [0, 255]: the same preprocessing as the server (services.core.imaging)."""
        return imaging.preprocess(self.load_image(image), size, self.eval_box(image, box_source))


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, reason: str) -> None:
        self.items.append(f"{where}: {reason}")

    def raise_if_any(self, root: Path) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_REPORTED]
        more = len(self.items) - len(shown)
        tail = f"\n  ... and {more} more" if more else ""
        raise DataError(f"data set {root} has {len(self.items)} problem(s):\n  " + "\n  ".join(shown) + tail)


def _read_csv(path: Path, columns: Sequence[str], problems: _Problems) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs; a missing column is reported and yields no rows."""
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                problems.add(path.name, f"missing column(s) {', '.join(missing)} (found: {', '.join(header) or 'none'})")
                return []
            return [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.add(path.name, f"cannot read: {exc}")
        return []


def _list_dir(path: Path) -> set[str]:
    return set(os.listdir(path)) if path.is_dir() else set()


def fix_species(species: str, counts: Counter) -> str:
    fixed = LABEL_FIXES.get(species)
    if fixed is None:
        return species
    counts[f"{species}->{fixed}"] += 1
    return fixed


def _load_train(root: Path, problems: _Problems, fixes: Counter) -> tuple[list[TrainRow], set[str]]:
    """The valid rows, and every image named in train.csv (so that a bad row does not also fail its boxes)."""
    path = root / "train.csv"
    if not path.exists():
        problems.add("train.csv", "file not found")
        return [], set()
    files = _list_dir(root / "train_images")
    rows, seen, named, unreadable = [], {}, set(), []
    for line, row in _read_csv(path, TRAIN_COLUMNS, problems):
        where = f"train.csv line {line}"
        named.add(row.get("image", ""))
        empty = [c for c in TRAIN_COLUMNS if not row.get(c)]
        if empty:
            problems.add(where, f"empty {', '.join(empty)}")
            continue
        if row["image"] in seen:
            problems.add(where, f"image {row['image']} already listed on line {seen[row['image']]}")
            continue
        seen[row["image"]] = line
        if row["image"] not in files:
            problems.add(where, f"image file train_images/{row['image']} not found")
        view, problem = viewpoint_hint(row.get(VIEWPOINT_COLUMN), row["image"])
        if problem:
            unreadable.append(f"line {line}: {problem}")
        rows.append(TrainRow(row["image"], fix_species(row["species"], fixes), row["individual_id"], view))
    if unreadable:
        log.warning("train.csv: %d unreadable viewpoint(s), taken as unknown: %s%s", len(unreadable),
                    "; ".join(unreadable[:5]), " ..." if len(unreadable) > 5 else "")
    return rows, named


def _load_test_images(root: Path, problems: _Problems) -> list[str]:
    files = _list_dir(root / "test_images")
    path = root / "sample_submission.csv"
    if not path.exists():
        return sorted(files)
    images, seen = [], {}
    for line, row in _read_csv(path, SUBMISSION_COLUMNS, problems):
        where = f"sample_submission.csv line {line}"
        image = row.get("image", "")
        if not image:
            problems.add(where, "empty image")
        elif image in seen:
            problems.add(where, f"image {image} already listed on line {seen[image]}")
        else:
            seen[image] = line
            if image not in files:
                problems.add(where, f"image file test_images/{image} not found")
            images.append(image)
    return images


def _load_truth(root: Path, test_images: Iterable[str], problems: _Problems, fixes: Counter) -> list[TruthRow] | None:
    path = root / "test_truth.csv"
    if not path.exists():
        return None
    known = set(test_images)
    rows = []
    for line, row in _read_csv(path, TRUTH_COLUMNS, problems):
        where = f"test_truth.csv line {line}"
        empty = [c for c in TRUTH_COLUMNS if not row.get(c)]
        if empty:
            problems.add(where, f"empty {', '.join(empty)}")
        elif row["image"] not in known:
            problems.add(where, f"image {row['image']} is not a test image")
        else:
            rows.append(TruthRow(row["image"], row["individual_id"], fix_species(row["species"], fixes)))
    return rows


def _image_size(path: Path) -> tuple[int, int] | None:
    """The size as shown (EXIF orientation applied): boxes are drawn on the upright photo, as the server sees it."""
    return imaging.oriented_size(path)


def _parse_box(row: dict[str, str]) -> tuple[Box | None, str]:
    try:
        values = tuple(float(row[c]) for c in ("x0", "y0", "x1", "y1"))
    except ValueError:
        return None, "non-numeric coordinate(s) " + ", ".join(f"{c}={row[c]!r}" for c in ("x0", "y0", "x1", "y1"))
    if not all(math.isfinite(v) for v in values):
        return None, f"non-finite coordinate(s) {values}"
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        return None, f"empty box (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}): needs x1 > x0 and y1 > y0"
    return values, ""


def _load_boxes(root: Path, train_images: set[str], test_images: list[str], problems: _Problems,
                check_bounds: bool) -> dict[str, dict[str, Box]]:
    splits = {image: "train_images" for image in train_images}
    splits.update({image: "test_images" for image in test_images})
    sizes: dict[str, tuple[int, int] | None] = {}
    boxes: dict[str, dict[str, Box]] = {}
    lines: dict[tuple[str, str], str] = {}
    for path in sorted(root.glob("boxes*.csv")):
        if path.name != "boxes.csv" and not path.name.startswith("boxes_"):
            continue
        for line, row in _read_csv(path, BOX_COLUMNS, problems):
            where = f"{path.name} line {line}"
            image, source = row.get("image", ""), row.get("source", "")
            if not image or not source:
                problems.add(where, "empty image or source")
                continue
            if image not in splits:
                problems.add(where, f"image {image} is in neither train.csv nor the test images")
                continue
            if (image, source) in lines:
                problems.add(where, f"second {source} box for {image} (first: {lines[image, source]})")
                continue
            lines[image, source] = where
            box, reason = _parse_box(row)
            if box is None:
                problems.add(where, reason)
                continue
            if check_bounds:
                if image not in sizes:
                    sizes[image] = _image_size(root / splits[image] / image)
                size = sizes[image]
                if size and (box[0] < 0 or box[1] < 0 or box[2] > size[0] or box[3] > size[1]):
                    problems.add(where, f"box {tuple(round(v, 1) for v in box)} outside the {size[0]}x{size[1]} image")
                    continue
            boxes.setdefault(image, {})[source] = box
    return boxes


def load_dataset(data_dir, check_box_bounds: bool = True) -> HappywhaleData:
    """Read and validate a data set; raises DataError listing every offending row."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data set directory {root} not found")
    problems, fixes = _Problems(), Counter()
    train, named_train = _load_train(root, problems, fixes)
    test_images = _load_test_images(root, problems)
    overlap = sorted({row.image for row in train} & set(test_images))
    for image in overlap[:MAX_REPORTED]:
        problems.add("sample_submission.csv", f"image {image} is also a train image")
    truth = _load_truth(root, test_images, problems, fixes)
    boxes = _load_boxes(root, named_train, test_images, problems, check_box_bounds)
    problems.raise_if_any(root)
    if fixes:
        log.info("species label fixes: %s", ", ".join(f"{k}: {v} row(s)" for k, v in sorted(fixes.items())))
    log.info("data set %s: %d train images of %d individuals, %d test images, box sources: %s",
             root, len(train), len({r.individual_id for r in train}), len(test_images),
             ", ".join(sorted({s for b in boxes.values() for s in b})) or "none")
    return HappywhaleData(root, train, test_images, boxes, truth, dict(sorted(fixes.items())))


def split_folds(individual_ids: Sequence[str], k: int, seed: int = 0) -> dict[str, int]:
    """Assign every individual to one of k folds (never split), balancing the number of images per fold.

    individual_ids: one entry per image (repeats give the weights). Deterministic by seed.
    """
    counts = Counter(individual_ids)
    if k < 2:
        raise DataError(f"split_folds: k must be >= 2 (got {k})")
    if len(counts) < k:
        raise DataError(f"split_folds: {len(counts)} individual(s) cannot fill {k} folds")
    order = sorted(counts)
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    order.sort(key=lambda individual: -counts[individual])  # stable: random order among equal counts
    load = [0] * k
    folds: dict[str, int] = {}
    for individual in order:
        fold = min(range(k), key=lambda f: (load[f], f))
        folds[individual] = fold
        load[fold] += counts[individual]
    return folds
