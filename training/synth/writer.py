"""`generate()`: plan, draw and write a synthetic data set in the Happywhale (Kaggle) layout.

    OUT/train.csv              image,species,individual_id   (a few species labels misspelt as in Kaggle)
    OUT/train_images/*.jpg
    OUT/test_images/*.jpg
    OUT/sample_submission.csv  image,predictions
    OUT/test_truth.csv         image,individual_id,species   (new_individual for animals not in train)
    OUT/boxes.csv              image,source,x0,y0,x1,y1      (train and test; one row per detector hit)
    OUT/dataset.json           generation parameters (the style too) and counts (photos per style, grey ones)
    OUT/preview.png            a contact sheet of a few individuals with their boxes

Same arguments and seed -> byte-identical files: every individual and every photo has its own random generator
derived from (seed, purpose, index), and only numpy + Pillow draw. A style's draws use a purpose of their own
(6), so style `photo` writes the images and CSVs it wrote before styles existed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from services.core.errors import DataError
from services.core.progress import ProgressBar
from training.synth import boxes as detectors
from training.synth.individuals import make_individual
from training.synth.plan import hex_ids, plan
from training.synth.preview import write_preview
from training.synth.render import Nuisance, canonical_rgba, nuisance_preset, render_photo
from training.synth.species import SPECIES
from training.synth.styles import check_style, pick_style, style_settings

log = logging.getLogger(__name__)

NEW_INDIVIDUAL = "new_individual"
FORMAT_VERSION = 1
OUTPUT_NAMES = ("train.csv", "train_images", "test_images", "sample_submission.csv", "test_truth.csv",
                "boxes.csv", "dataset.json", "preview.png")


def _check(individuals, species, image_size, test_new_share, max_photos, misspelt_share, jpeg_quality, zipf_a):
    problems = []
    if individuals < 2:
        problems.append(f"individuals must be >= 2 (got {individuals})")
    if not 1 <= species <= len(SPECIES):
        problems.append(f"species must be 1..{len(SPECIES)} (got {species})")
    if not 64 <= image_size <= 2048:
        problems.append(f"image_size must be 64..2048 pixels (got {image_size})")
    if not 0.0 <= test_new_share < 1.0:
        problems.append(f"test_new_share must be in [0, 1) (got {test_new_share})")
    if max_photos < 1:
        problems.append(f"max_photos must be >= 1 (got {max_photos})")
    if not 0.0 <= misspelt_share <= 1.0:
        problems.append(f"misspelt_share must be in [0, 1] (got {misspelt_share})")
    if not 10 <= jpeg_quality <= 100:
        problems.append(f"jpeg_quality must be 10..100 (got {jpeg_quality})")
    if zipf_a <= 1.0:
        problems.append(f"zipf_a must be > 1 (got {zipf_a})")
    if problems:
        raise DataError("synth: " + "; ".join(problems))


def _prepare(out: Path, overwrite: bool) -> None:
    existing = [name for name in OUTPUT_NAMES if (out / name).exists()]
    if existing and not overwrite:
        raise DataError(f"{out} already holds a data set ({', '.join(existing)}); pass overwrite=True (--overwrite)")
    for name in existing:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    (out / "train_images").mkdir(parents=True, exist_ok=True)
    (out / "test_images").mkdir(parents=True, exist_ok=True)


def _write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def generate(out_dir, individuals: int, seed: int, species: int = len(SPECIES), image_size: int = 192,
             test_new_share: float = 0.3, max_photos: int = 12, misspelt_share: float = 0.05,
             jpeg_quality: int = 90, zipf_a: float = 1.8, nuisance: Nuisance | str = "normal",
             overwrite: bool = False, preview: bool = True, progress: bool = False, style: str = "photo") -> dict:
    """Write a synthetic Happywhale data set to out_dir; returns the counts (also in dataset.json).

    style: photo | grey | overcast | textured | random (styles.py); each photo's style draws come from their own
    generator, so the pose, boxes and labels are the same for every style and `photo` gives today's files.
    """
    _check(individuals, species, image_size, test_new_share, max_photos, misspelt_share, jpeg_quality, zipf_a)
    check_style(style)
    nuisance_name = nuisance if isinstance(nuisance, str) else "custom"
    nuisance = nuisance_preset(nuisance) if isinstance(nuisance, str) else nuisance
    out = Path(out_dir)
    _prepare(out, overwrite)
    width, height = image_size, int(round(image_size * 2 / 3))
    started = time.monotonic()

    planned = plan(np.random.default_rng([seed, 0]), individuals, SPECIES[:species], max_photos, test_new_share, zipf_a)
    total = sum(p.train_photos + p.test_photos for p in planned)
    names = iter(hex_ids(np.random.default_rng([seed, 1]), total, 14))
    log.debug("synth: %d individuals, %d photos (%dx%d) -> %s", individuals, total, width, height, out)
    bar = ProgressBar(f"drawing {total} photos of {individuals} individuals", total, enabled=progress)

    train_rows, truth_rows, box_rows, samples = [], [], [], {}
    style_counts: dict[str, int] = {}
    grey_images = 0
    for individual_plan in planned:
        individual = make_individual(np.random.default_rng([seed, 2, individual_plan.index]),
                                     individual_plan.individual_id, individual_plan.species)
        animal, outline = canonical_rgba(individual), individual.outline()
        label_rng = np.random.default_rng([seed, 5, individual_plan.index])
        for photo in range(individual_plan.train_photos + individual_plan.test_photos):
            split = "train" if photo < individual_plan.train_photos else "test"
            image = f"{next(names)}.jpg"
            style_rng = np.random.default_rng([seed, 6, individual_plan.index, photo])
            look = pick_style(style_rng, style)
            picture, tight = render_photo(np.random.default_rng([seed, 3, individual_plan.index, photo]),
                                          animal, outline, width, height, nuisance, look, style_rng)
            style_counts[look.name] = style_counts.get(look.name, 0) + 1
            grey_images += look.grey
            picture.save(out / f"{split}_images" / image, format="JPEG", quality=jpeg_quality)
            box_rng = np.random.default_rng([seed, 4, individual_plan.index, photo])
            for detector in detectors.DETECTORS:
                box = detectors.detect(box_rng, detector, tight, width, height)
                if box is not None:
                    box_rows.append((image, detector.source, *box))
            species_name = individual_plan.species.name
            if split == "train":
                label = species_name
                misspellings = individual_plan.species.misspellings
                if misspellings and label_rng.random() < misspelt_share:
                    label = misspellings[int(label_rng.integers(len(misspellings)))]
                train_rows.append((image, label, individual.individual_id))
            else:
                truth_id = NEW_INDIVIDUAL if individual_plan.is_new else individual.individual_id
                truth_rows.append((image, truth_id, species_name))
            samples.setdefault(individual.individual_id, []).append((split, image, tight))
            bar.update()

    train_rows.sort()
    truth_rows.sort()
    box_rows.sort()
    counts = _counts(planned, train_rows, truth_rows, box_rows)
    counts["styles"] = dict(sorted(style_counts.items()))
    counts["grey_images"] = grey_images
    _write_csv(out / "train.csv", ["image", "species", "individual_id"], train_rows)
    _write_csv(out / "test_truth.csv", ["image", "individual_id", "species"], truth_rows)
    _write_csv(out / "boxes.csv", ["image", "source", "x0", "y0", "x1", "y1"], box_rows)
    frequent = [i for i, _ in sorted(counts["train_photos_per_individual"].items(), key=lambda kv: (-kv[1], kv[0]))][:4]
    placeholder = " ".join([NEW_INDIVIDUAL, *frequent])
    _write_csv(out / "sample_submission.csv", ["image", "predictions"], [(row[0], placeholder) for row in truth_rows])
    if preview:
        write_preview(out, samples, box_rows)
    parameters = {
        "individuals": individuals, "seed": seed, "species": species, "image_size": [width, height],
        "test_new_share": test_new_share, "max_photos": max_photos, "misspelt_share": misspelt_share,
        "jpeg_quality": jpeg_quality, "zipf_a": zipf_a, "nuisance_preset": nuisance_name,
        "nuisance": dataclasses.asdict(nuisance), "style": style, "style_settings": style_settings(style),
        "detectors": [dataclasses.asdict(d) for d in detectors.DETECTORS],
    }
    summary = {key: value for key, value in counts.items() if key != "train_photos_per_individual"}
    description = {"generator": "whaleid synth", "format_version": FORMAT_VERSION, "parameters": parameters,
                   "species": [s.name for s in SPECIES[:species]], "counts": summary}
    (out / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    log.debug("synth: wrote %d train and %d test images in %.1f s", summary["train_images"], summary["test_images"],
             time.monotonic() - started)
    return summary


def _counts(planned, train_rows, truth_rows, box_rows) -> dict:
    per_individual: dict[str, int] = {}
    for _, _, individual_id in train_rows:
        per_individual[individual_id] = per_individual.get(individual_id, 0) + 1
    sources: dict[str, int] = {}
    for row in box_rows:
        sources[row[1]] = sources.get(row[1], 0) + 1
    test_new = sum(1 for row in truth_rows if row[1] == NEW_INDIVIDUAL)
    return {
        "individuals": len(planned),
        "train_individuals": len(per_individual),
        "new_individuals": sum(1 for p in planned if p.is_new),
        "train_images": len(train_rows),
        "test_images": len(truth_rows),
        "test_new_images": test_new,
        "test_seen_images": len(truth_rows) - test_new,
        "misspelt_labels": sum(1 for row in train_rows if row[1] not in {p.species.name for p in planned}),
        "boxes": sources,
        "train_photos_per_individual": per_individual,
    }
