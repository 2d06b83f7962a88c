"""A training run's folds: RUN/folds.csv (individual_id,fold), written by `whaleid train` and read by evaluate,
predict, `gallery build` and the demo (one reader; no TensorFlow, so the services can read it too)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping

from services.core.errors import DataError

FOLDS_FILE = "folds.csv"


def write_folds(path: Path, folds: Mapping[str, int]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["individual_id", "fold"])
        for individual, fold in sorted(folds.items()):
            writer.writerow([individual, fold])


def read_folds(path: Path) -> dict[str, int]:
    """{individual_id: fold} of a folds.csv, checked: bad rows and repeated individuals are errors naming the lines."""
    from services.core.identification.submission import read_csv_rows

    folds, problems = {}, []
    for line, row in read_csv_rows(path, ("individual_id", "fold")):
        individual, fold = (row.get("individual_id") or "").strip(), (row.get("fold") or "").strip()
        if not individual or not fold.lstrip("-").isdigit():
            problems.append(f"line {line}: bad row {row}")
        elif individual in folds:
            problems.append(f"line {line}: individual {individual} appears twice")
        else:
            folds[individual] = int(fold)
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems[:10]))
    return folds


def run_folds(run_dir: Path) -> dict[str, int]:
    """The folds of training run `run_dir` ({} when it has none: a run from elsewhere)."""
    path = Path(run_dir) / FOLDS_FILE
    return read_folds(path) if path.is_file() else {}
