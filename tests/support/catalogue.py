"""Catalogue test helpers: small distinct photos and CSV files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def photo(path: Path, seed: int, fmt: str = "JPEG", size: tuple[int, int] = (48, 32)) -> Path:
    """A small distinct photo (different bytes per seed)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path
