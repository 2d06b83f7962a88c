"""Kaggle CSV files: submissions (`image,predictions`, five space-separated ids) and truth files
(`image,individual_id[,species]`). Malformed files raise a DataError naming the rows (line numbers)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from services.core.errors import DataError
from services.core.identification.metrics import TOP_K, map_at_5, map_at_5_per_group

SUBMISSION_COLUMNS = ("image", "predictions")


@dataclass
class Truth:
    images: list[str]
    individual_ids: list[str]
    species: list[str] | None


def read_csv_rows(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file that must have the `required` columns."""
    return _read_rows(Path(path), required)[1]


def _read_rows(path: Path, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            missing = [c for c in required if c not in columns]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'})")
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read it as CSV: {exc}") from None
    return columns, rows


def _fail(path: Path, problems: list[str]) -> None:
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... ({len(problems)} problems in all)" if len(problems) > 10 else "")
        raise DataError(f"{path}: {shown}")


def read_submission(path: str | Path) -> dict[str, list[str]]:
    """image -> its predictions (at most five, in order)."""
    path = Path(path)
    _, rows = _read_rows(path, SUBMISSION_COLUMNS)
    problems, result = [], {}
    for line, row in rows:
        if None in row or any(v is None for v in row.values()):
            problems.append(f"line {line}: wrong number of fields")
            continue
        image = row["image"].strip()
        labels = row["predictions"].split()
        if not image:
            problems.append(f"line {line}: empty image")
        elif image in result:
            problems.append(f"line {line}: image {image} appears twice")
        elif len(labels) > TOP_K:
            problems.append(f"line {line}: {len(labels)} predictions for {image} (at most {TOP_K})")
        else:
            result[image] = labels
    _fail(path, problems)
    return result


def read_truth(path: str | Path) -> Truth:
    path = Path(path)
    columns, rows = _read_rows(path, ("image", "individual_id"))
    has_species = "species" in columns
    problems, images, ids, species, seen = [], [], [], [], set()
    for line, row in rows:
        if None in row or any(v is None for v in row.values()):
            problems.append(f"line {line}: wrong number of fields")
            continue
        image, individual = row["image"].strip(), row["individual_id"].strip()
        if not image or not individual:
            problems.append(f"line {line}: empty image or individual_id")
        elif image in seen:
            problems.append(f"line {line}: image {image} appears twice")
        else:
            seen.add(image)
            images.append(image)
            ids.append(individual)
            species.append(row["species"].strip() if has_species else "")
    _fail(path, problems)
    if not images:
        raise DataError(f"{path}: no rows")
    return Truth(images, ids, species if has_species else None)


def score_submission(submission_path: str | Path, truth_path: str | Path) -> dict:
    """{"map5": overall, "per_species": {...} (empty without a species column), "count": rows}."""
    submission = read_submission(submission_path)
    truth = read_truth(truth_path)
    missing = [image for image in truth.images if image not in submission]
    if missing:
        raise DataError(f"{submission_path}: {len(missing)} image(s) of the truth have no prediction: "
                        + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    extra = sorted(set(submission) - set(truth.images))
    if extra:
        raise DataError(f"{submission_path}: {len(extra)} image(s) are not in the truth file: "
                        + ", ".join(extra[:10]) + (" ..." if len(extra) > 10 else ""))
    predictions = [submission[image] for image in truth.images]
    result = {"map5": map_at_5(predictions, truth.individual_ids), "count": len(truth.images), "per_species": {}}
    if truth.species is not None:
        result["per_species"] = map_at_5_per_group(predictions, truth.individual_ids, truth.species)
    return result


def write_submission(path: str | Path, images: Sequence[str], predictions: Sequence[Sequence[str]]) -> Path:
    if len(images) != len(predictions):
        raise DataError(f"submission: {len(images)} images but {len(predictions)} prediction rows")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(SUBMISSION_COLUMNS)
        for image, labels in zip(images, predictions, strict=True):
            writer.writerow([image, " ".join(labels)])
    return path


def format_scores(map5: float, per_species: dict[str, float], count: int | None = None) -> str:
    lines = [f"MAP@5 {map5:.4f}" + (f" ({count} images)" if count is not None else "")]
    if per_species:
        width = max(len(s) for s in per_species)
        lines += [f"  {name:<{width}}  {value:.4f}" for name, value in per_species.items()]
    return "\n".join(lines)
