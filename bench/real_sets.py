"""The real development sets of `python -m bench identification_quality` (issue #21 item 1): every method side by
side on photos that no generator of ours drew, each threshold chosen out of sample. Everything here skips cleanly
(returns None) when ../shared/data is absent, as on a user's fresh clone; the photos are read where they lie and
never copied.

Sets (keys of the JSON's `real_sets`):
  - `nyala-test`, `nyala-train` (../shared/data/real-reid/nyala, 58 resp. 179 individuals): an open set
    (`open_set_split`; `split` has its counts and `map5_always_new`, the floor): a share NEW_SHARE of the individuals (seeded) is held out of the gallery, the photos of
    their first encounter are `new_individual` queries; for the others the first half of their encounters
    (by encounter number, at least one) is the gallery and the rest are queries. An encounter (the number before
    `_` in `<encounter>_<left|right>photo.jpg`) is never split. No method here trains on nyala, so both splits are
    held out from every method. Per method:
      `map5_cross_fitted` (services.core.identification.tuning.cross_fitted_map5: two halves by individual, each
      scored at the threshold best on the other), `map5_calibrated_default` at `calibrated_threshold`
      (threshold_choice.catalogue_threshold of the gallery alone: no query seen), `map5_best_optimistic` at
      `best_threshold_optimistic` (tuned on the queries themselves: an upper bound, not a result),
      `known_top1`, and `viewpoint` (issue item 7): known top-1 against a gallery of the query's own flank only
      (`known_top1_same_flank`) vs of the other flank only (`known_top1_other_flank`), and
      `best_photo_same_flank`: among queries whose animal has both flanks in the gallery, the share where that
      animal's best-scoring gallery photo shows the query's flank (see `viewpoint`); `viewpoint_gallery`: the
      gallery as one mean per individual (`means`) vs one mean per (individual, flank) (`viewpoint-means`, the
      file name's hint, services.core.identification.viewpoint), each with `map5_cross_fitted` and `known_top1`
      (the answer stays per individual; with no hint, as on the synthetic looks, the two are the same rows).
  - `fins` (../shared/data/real-photos): the README's tiny identity check: gallery = `5412.jpg`, `ind1`-`ind5`
    and the 53 bottlenose fin crops (each its own individual); queries `5412.a.jpg`, `5412.b.jpg`;
    `rank_of_truth` per query and `map5` with `new_individual` never answered (every query is known).
  - `happywhale_boxes` (../shared/data/real-reid/happywhale-boxes, 85 photos, 91 boxes): box IoU with the
    best-matching true box of each photo, averaged per photo and per `source_image` (the versions of one photo
    are near-duplicates, so `mean_iou_by_source` is the figure to quote); `iou_at_0_5` is the share of photos
    with IoU >= 0.5. Localisers: `whole_frame` (no crop), `detector` (the synthetic-scene detector, exported
    to ONNX and run as served on the whole photo; `served` = its box when its score is >= 0.5, else the whole
    frame, as the worker crops) and `cam` (no box labels: training.localiser, the class activation map of the
    photo's top ImageNet class from the pretrained EfficientNet-Lite2 @ 384, the connected region around its peak
    at services.core.localisation.CAM_FRACTION of its maximum, widened by CAM_MARGIN; `served` = its box when
    its score, the share of the map's mass in the box, is >= 0.5, else the whole frame, as `localiser: cam` and
    the served CAM `detector` crop; `cam_fraction_sweep` gives other fractions with no margin, in-sample, for
    orientation only).
Each method's `ms_per_image` is the wall time of embedding (decode, resize, model) per image measured in the
same run, `cpu_ms_per_image` the process CPU time per image (both cores), after one warm-up image.
`run(..., looks=...)` adds synthetic open sets (e.g. `synth-random`) scored like nyala; `run(..., rerank=...)`
adds `<method>+sift` beside each re-ranked method (bench/real_rerank.py), its costs in `cost`.
"""

from __future__ import annotations

import csv
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NYALA = SHARED / "real-reid" / "nyala"
HAPPYWHALE_BOXES = SHARED / "real-reid" / "happywhale-boxes"
REAL_PHOTOS = SHARED / "real-photos"
NEW_SHARE = 0.25
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
NEW_INDIVIDUAL = "new_individual"  # services.core.identification.ranking.NEW_INDIVIDUAL (kept import-free here)
DETECTOR_MIN_SCORE = 0.5  # services.chain.worker.cropping.DETECTOR_MIN_SCORE


# ----------------------------------------------------------------------------- nyala: the open-set split
_FLANK = re.compile(r"_(left|right)photo$", re.IGNORECASE)


def flank(path: str | Path) -> str | None:
    """`left` / `right` from a nyala file name `<encounter>_<left|right>photo.jpg`, else None."""
    match = _FLANK.search(Path(path).stem)
    return match.group(1).lower() if match else None


def encounter(path: str | Path) -> str:
    """The encounter of a nyala photo: the file name before the first `_`."""
    return Path(path).stem.split("_")[0]


def _encounter_order(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def photos_by_individual(split_dir: Path) -> dict[str, list[Path]]:
    """{individual: its photos} of a folder of `<individual>/<photo>` (empty when the folder is absent)."""
    if not split_dir.is_dir():
        return {}
    out = {}
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if photos:
            out[folder.name] = photos
    return out


@dataclass
class OpenSetSplit:
    gallery: list[Path] = field(default_factory=list)
    gallery_ids: list[str] = field(default_factory=list)
    queries: list[Path] = field(default_factory=list)
    truths: list[str] = field(default_factory=list)  # individual, or NEW_INDIVIDUAL
    groups: list[str] = field(default_factory=list)  # the query's true individual (cross-fitting keeps it whole)
    new_individuals: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        known = sum(t != NEW_INDIVIDUAL for t in self.truths)
        return {"gallery_photos": len(self.gallery), "gallery_individuals": len(set(self.gallery_ids)),
                "queries": len(self.queries), "known_queries": known, "new_queries": len(self.truths) - known,
                "new_individuals": len(self.new_individuals)}


def open_set_split(photos: dict[str, Sequence[Path]], new_share: float = NEW_SHARE, seed: int = 0) -> OpenSetSplit:
    """Gallery/queries by encounter with held-out individuals as `new_individual` (module docstring)."""
    individuals = sorted(photos)
    rng = np.random.default_rng(seed)
    count = int(round(len(individuals) * new_share))
    new = set(rng.choice(individuals, count, replace=False).tolist()) if count else set()
    split = OpenSetSplit(new_individuals=sorted(new))
    for individual in individuals:
        encounters: dict[str, list[Path]] = defaultdict(list)
        for path in photos[individual]:
            encounters[encounter(path)].append(Path(path))
        order = sorted(encounters, key=_encounter_order)
        if individual in new:
            first = encounters[order[0]]
            split.queries += first
            split.truths += [NEW_INDIVIDUAL] * len(first)
            split.groups += [individual] * len(first)
            continue
        in_gallery = max(1, len(order) // 2)
        for name in order[:in_gallery]:
            split.gallery += encounters[name]
            split.gallery_ids += [individual] * len(encounters[name])
        for name in order[in_gallery:]:
            split.queries += encounters[name]
            split.truths += [individual] * len(encounters[name])
            split.groups += [individual] * len(encounters[name])
    return split


def nyala_splits(root: Path | None = None, seed: int = 0) -> dict[str, OpenSetSplit]:
    """{'nyala-test': ..., 'nyala-train': ...} for the splits present (empty without the data)."""
    root = NYALA if root is None else root
    out = {}
    for part in ("test", "train"):
        photos = photos_by_individual(root / part)
        if photos:
            out[f"nyala-{part}"] = open_set_split(photos, seed=seed)
    return out


def nyala_happywhale_layout(out: Path, part: str = "train", root: Path | None = None) -> int:
    """A nyala split as a Happywhale-layout data set in `out` (to train on it, e.g. for `python -m bench blend`):
    `train_images/<individual>_<photo>` symlinks to the photos where they lie (never copies; keep `out` outside
    the repo), train.csv (species `nyala`, individual `n<individual>`), an empty test_images/ and
    sample_submission.csv. Returns the number of photos (0 without the data)."""
    photos = photos_by_individual((NYALA if root is None else root) / part)
    out = Path(out)
    (out / "train_images").mkdir(parents=True, exist_ok=True)
    (out / "test_images").mkdir(exist_ok=True)
    rows = []
    for individual, paths in photos.items():
        for photo in paths:
            name = f"{individual}_{photo.name}"
            link = out / "train_images" / name
            if not link.is_symlink():
                link.symlink_to(photo.resolve())
            rows.append((name, "nyala", f"n{individual}"))
    with open(out / "train.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "species", "individual_id"])
        writer.writerows(rows)
    (out / "sample_submission.csv").write_text("image,predictions\n")
    return len(rows)


# ----------------------------------------------------------------------------- fins: the README's identity check
@dataclass
class ClosedCheck:
    gallery: list[Path]
    gallery_ids: list[str]
    queries: list[Path]
    truths: list[str]


def fin_check(root: Path | None = None) -> ClosedCheck | None:
    """The real-photos README's check: gallery 5412.jpg, ind1-ind5, the fin crops; queries 5412.a/.b."""
    root = REAL_PHOTOS if root is None else root
    fins, crops = root / "finfindr-fins", root / "bottlenose-fin-crops"
    queries = [fins / "5412.a.jpg", fins / "5412.b.jpg"]
    if not crops.is_dir() or not all(q.exists() for q in [*queries, fins / "5412.jpg"]):
        return None
    gallery = {fins / "5412.jpg": "5412"}
    gallery.update({p: p.stem for p in sorted(fins.glob("ind*")) if p.suffix.lower() in IMAGE_SUFFIXES})
    gallery.update({p: f"crop-{p.stem}" for p in sorted(crops.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES})
    return ClosedCheck(list(gallery), list(gallery.values()), queries, ["5412", "5412"])


# ----------------------------------------------------------------------------- scoring
def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def prepare(gallery_x: np.ndarray, query_x: np.ndarray, centre: bool) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised features; raw pixels are first centred on the gallery mean (as training.baseline does)."""
    if centre:
        mean = gallery_x.mean(axis=0, keepdims=True)
        gallery_x, query_x = gallery_x - mean, query_x - mean
    return normalise(gallery_x), normalise(query_x)


def _rank(gallery_x, gallery_ids, query_x, k: int = 50):
    from services.core.identification import build_gallery, rank_candidates

    gallery = build_gallery(gallery_x, list(gallery_ids), ["unknown"] * len(gallery_ids),
                            [str(i) for i in range(len(gallery_ids))])
    return rank_candidates(gallery, query_x, k)


def _map5_at(candidates, truths, threshold: float) -> float:
    from services.core.identification.ranking import average_precisions

    return round(float(average_precisions(candidates, truths, np.array([threshold], np.float32))[0].mean()), 4)


def score_open_set(split: OpenSetSplit, gallery_x: np.ndarray, query_x: np.ndarray) -> dict:
    """The open-set figures of one method (module docstring); features already prepared (`prepare`)."""
    from services.core.identification.threshold_choice import catalogue_threshold
    from services.core.identification.tuning import cross_fitted_map5, sweep_threshold

    candidates = _rank(gallery_x, split.gallery_ids, query_x)
    truths = np.asarray(split.truths, dtype=object)
    fitted = cross_fitted_map5(candidates, truths, split.groups)
    calibrated = catalogue_threshold(gallery_x, split.gallery_ids)
    sweep = sweep_threshold(candidates, truths)
    known = truths != NEW_INDIVIDUAL
    hits = candidates.ids[:, 0] == truths
    return {"map5_cross_fitted": fitted["map5"], "cross_fitted_thresholds": fitted["thresholds"],
            "map5_calibrated_default": _map5_at(candidates, truths, calibrated) if calibrated is not None else None,
            "calibrated_threshold": calibrated,
            "map5_best_optimistic": round(sweep.best_map5, 4), "best_threshold_optimistic": sweep.best,
            "known_top1": round(float(hits[known].mean()), 4) if known.any() else None,
            "viewpoint": viewpoint(split, gallery_x, query_x),
            "viewpoint_gallery": viewpoint_gallery(split, gallery_x, query_x)}


def viewpoint_gallery(split: OpenSetSplit, gallery_x: np.ndarray, query_x: np.ndarray) -> dict:
    """Cross-fitted MAP@5 and known top-1 with the gallery as `means` vs `viewpoint-means` (module docstring),
    built by the identification core (gallery.build_reference_gallery) from the file names' hints."""
    from services.core.identification import rank_candidates
    from services.core.identification.gallery import build_reference_gallery
    from services.core.identification.tuning import cross_fitted_map5
    from services.core.identification.viewpoint import viewpoint_from_name

    views = [viewpoint_from_name(p) for p in split.gallery]
    truths = np.asarray(split.truths, dtype=object)
    known = truths != NEW_INDIVIDUAL
    out: dict = {"hinted_gallery_photos": sum(v is not None for v in views)}
    for references in ("means", "viewpoint-means"):
        gallery = build_reference_gallery(gallery_x, list(split.gallery_ids), ["unknown"] * len(views),
                                          [str(p) for p in split.gallery], references, viewpoints=views)
        candidates = rank_candidates(gallery, query_x, 50)
        hits = candidates.ids[:, 0] == truths
        out[references] = {"rows": len(gallery),
                           "map5_cross_fitted": cross_fitted_map5(candidates, truths, split.groups)["map5"],
                           "known_top1": round(float(hits[known].mean()), 4) if known.any() else None}
    return out


def viewpoint(split: OpenSetSplit, gallery_x: np.ndarray, query_x: np.ndarray) -> dict:
    """Known top-1 against a gallery of one flank only (issue item 7): the query's own flank (`same_flank`) vs
    the other flank (`other_flank`), over the known queries whose animal has photos of that flank in the gallery;
    and `best_photo_same_flank`: among known queries whose animal has both flanks in the gallery, the share where
    its best-scoring gallery photo shows the query's flank (0.5 would be blind to the flank)."""
    gallery_ids = np.asarray(split.gallery_ids, dtype=object)
    gallery_flanks = np.asarray([flank(p) for p in split.gallery], dtype=object)
    query_flanks = np.asarray([flank(p) for p in split.queries], dtype=object)
    truths = np.asarray(split.truths, dtype=object)
    hits: dict[str, list[bool]] = {"same": [], "other": []}
    for side in ("left", "right"):
        rows = np.flatnonzero(gallery_flanks == side)
        if rows.size == 0:
            continue
        present = set(gallery_ids[rows].tolist())
        asked = np.flatnonzero(np.isin(truths, list(present)) & (query_flanks != None))  # noqa: E711
        if asked.size == 0:
            continue
        top = _rank(gallery_x[rows], gallery_ids[rows].tolist(), query_x[asked], 1).ids[:, 0]
        for q, answer in zip(asked, top, strict=True):
            hits["same" if query_flanks[q] == side else "other"].append(answer == truths[q])
    best_same = []
    for q in np.flatnonzero((truths != NEW_INDIVIDUAL) & (query_flanks != None)):  # noqa: E711
        rows = np.flatnonzero(gallery_ids == truths[q])
        if {"left", "right"} <= set(gallery_flanks[rows].tolist()):
            best = rows[int(np.argmax(gallery_x[rows] @ query_x[q]))]
            best_same.append(gallery_flanks[best] == query_flanks[q])

    def share(values):
        return round(float(np.mean(values)), 4) if values else None

    return {"known_top1_same_flank": share(hits["same"]), "queries_same_flank": len(hits["same"]),
            "known_top1_other_flank": share(hits["other"]), "queries_other_flank": len(hits["other"]),
            "best_photo_same_flank": share(best_same), "queries_both_flanks_in_gallery": len(best_same)}


def score_closed(check: ClosedCheck, gallery_x: np.ndarray, query_x: np.ndarray, candidates=None) -> dict:
    """Rank of the right animal per query and MAP@5 with `new_individual` never answered (of `candidates`, e.g.
    re-ranked ones, when given)."""
    from services.core.identification import map_at_5
    from services.core.identification.ranking import insert_new_individual

    candidates = _rank(gallery_x, check.gallery_ids, query_x) if candidates is None else candidates
    predictions = [[i for i, _ in p] for p in insert_new_individual(candidates, -np.inf)]
    ranks = [int(np.flatnonzero(candidates.ids[q] == t)[0]) + 1 if t in candidates.ids[q] else None
             for q, t in enumerate(check.truths)]
    return {"rank_of_truth": ranks, "map5": round(map_at_5(predictions, check.truths), 4),
            "gallery_photos": len(check.gallery)}


def timed_embed(embed: Callable[[list[Path]], np.ndarray], paths: Sequence[Path]) -> tuple[np.ndarray, dict]:
    """Features of `paths` and the time per image (wall and process CPU), after one warm-up image."""
    paths = list(paths)
    embed(paths[:1])
    wall, cpu = time.perf_counter(), time.process_time()
    features = embed(paths)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return features, {"images": len(paths), "ms_per_image": round(1000 * wall / len(paths), 2),
                      "cpu_ms_per_image": round(1000 * cpu / len(paths), 2)}


# ----------------------------------------------------------------------------- Happywhale boxes: localisation
@dataclass
class BoxSet:
    photos: list[Path]
    sources: list[str]
    boxes: list[np.ndarray]  # per photo (n, 4) pixel boxes x0 y0 x1 y1


def happywhale_boxes(root: Path | None = None) -> BoxSet | None:
    root = HAPPYWHALE_BOXES if root is None else root
    table = root / "boxes.csv"
    if not table.is_file():
        return None
    grouped: dict[str, list] = {}
    source_of = {}
    with open(table, newline="") as fh:
        for row in csv.DictReader(fh):
            grouped.setdefault(row["image"], []).append([float(row[k]) for k in ("x0", "y0", "x1", "y1")])
            source_of[row["image"]] = row["source_image"]
    names = [n for n in sorted(grouped) if (root / "images" / n).is_file()]
    if not names:
        return None
    return BoxSet([root / "images" / n for n in names], [source_of[n] for n in names],
                  [np.asarray(grouped[n], np.float64) for n in names])


def best_ious(predicted: np.ndarray, truth: Sequence[np.ndarray]) -> np.ndarray:
    """Per photo: the IoU of its predicted box with the best-matching true box."""
    from training.detector.data import iou

    return np.asarray([float(iou(np.tile(p, (len(t), 1)), t).max()) for p, t in zip(predicted, truth, strict=True)])


def iou_summary(ious: np.ndarray, sources: Sequence[str]) -> dict:
    by_source = defaultdict(list)
    for value, source in zip(ious, sources, strict=True):
        by_source[source].append(value)
    return {"mean_iou_per_photo": round(float(np.mean(ious)), 4),
            "mean_iou_by_source": round(float(np.mean([np.mean(v) for v in by_source.values()])), 4),
            "iou_at_0_5": round(float(np.mean(ious >= 0.5)), 4)}


def _load(paths) -> list[np.ndarray]:
    from services.core.imaging import load_image_file

    return [load_image_file(p) for p in paths]


def detector_boxes(onnx_path: Path, image_size: int, photos: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(pixel boxes, scores) of the exported detector run as served: the whole photo resized, onnxruntime."""
    import onnxruntime as ort

    from services.core.imaging import resize_for_model

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    boxes, scores = [], []
    for start in range(0, len(photos), 32):
        part = photos[start:start + 32]
        box, score = session.run(["box", "score"], {"image": np.stack([resize_for_model(p, image_size) for p in part])})
        scale = np.asarray([[p.shape[1], p.shape[0], p.shape[1], p.shape[0]] for p in part], np.float64)
        boxes.append(np.asarray(box, np.float64) * scale)
        scores.append(np.asarray(score).reshape(-1))
    return np.concatenate(boxes), np.concatenate(scores)


def localisation(boxes: BoxSet, detector: tuple[Path, int] | None, detector_note: str, cam: bool = True) -> dict:
    """IoU on the real Happywhale boxes of the whole frame, the detector (when given) and the CAM localiser."""
    photos = _load(boxes.photos)
    sizes = [(p.shape[1], p.shape[0]) for p in photos]
    whole = np.asarray([[0.0, 0.0, w, h] for w, h in sizes])
    result = {"photos": len(photos), "sources": len(set(boxes.sources)),
              "true_boxes": int(sum(len(b) for b in boxes.boxes)),
              "whole_frame": iou_summary(best_ious(whole, boxes.boxes), boxes.sources)}
    if detector is not None:
        onnx_path, size = detector
        started = time.perf_counter()
        predicted, scores = detector_boxes(onnx_path, size, photos)
        ms = round(1000 * (time.perf_counter() - started) / len(photos), 2)
        served = np.where((scores >= DETECTOR_MIN_SCORE)[:, None], predicted, whole)
        result["detector"] = {**iou_summary(best_ious(predicted, boxes.boxes), boxes.sources),
                              "served": iou_summary(best_ious(served, boxes.boxes), boxes.sources),
                              "share_score_at_least_0_5": round(float(np.mean(scores >= DETECTOR_MIN_SCORE)), 4),
                              "ms_per_photo": ms, "note": detector_note}
    else:
        result["detector"] = {"note": detector_note}
    if cam:
        result["cam"] = cam_localisation(photos, boxes, whole)
    return result


def cam_localisation(photos: list[np.ndarray], boxes: BoxSet, whole: np.ndarray) -> dict:
    """IoU of the CAM localiser (training.localiser, the crop of `localiser: cam` and of the served CAM
    `detector`): its raw boxes, and as served (its box from MIN_SCORE, else the whole frame)."""
    from services.core.localisation import MIN_SCORE, cam_box
    from training.localiser import CamLocaliser

    localiser = CamLocaliser()
    localiser.maps(photos[:1])
    started = time.perf_counter()
    maps = localiser.maps(photos)
    ms = round(1000 * (time.perf_counter() - started) / len(photos), 2)
    scale = np.asarray([[w, h, w, h] for _, _, w, h in whole])

    def pixel_boxes(fraction, margin):
        found = [cam_box(m, fraction, margin) for m in maps]
        return np.stack([b for b, _ in found]) * scale, np.asarray([s for _, s in found])

    raw, scores = pixel_boxes(localiser.fraction, localiser.margin)
    served = np.where((scores >= MIN_SCORE)[:, None], raw, whole)
    return {**iou_summary(best_ious(raw, boxes.boxes), boxes.sources),
            "served": iou_summary(best_ious(served, boxes.boxes), boxes.sources),
            "share_score_at_least_0_5": round(float(np.mean(scores >= MIN_SCORE)), 4),
            "backbone": localiser.name, "fraction": localiser.fraction, "margin": localiser.margin,
            "ms_per_photo": ms,
            "cam_fraction_sweep": {str(f): iou_summary(best_ious(pixel_boxes(f, 0.0)[0], boxes.boxes),
                                                       boxes.sources)["mean_iou_by_source"]
                                   for f in (0.1, 0.2, 0.3, 0.5)}}


# ----------------------------------------------------------------------------- the whole real part
@dataclass
class Method:
    """A method of the comparison: `embed(paths) -> (N, D)` features; `centre` for raw pixels."""

    embed: Callable[[list[Path]], np.ndarray]
    centre: bool = False
    note: str = ""


def run(methods: dict[str, Method], detector: tuple[Path, int] | None = None, detector_note: str = "",
        cam: bool = True, log=None, rerank=None, looks: dict[str, OpenSetSplit] | None = None) -> dict:
    """Every real set present, every method side by side (module docstring); {} without ../shared/data.
    `rerank` (bench.real_rerank.Rerank): also `<method>+sift` for its methods; `looks`: synthetic open sets
    scored like nyala."""
    sets: dict[str, dict] = {}
    timing: dict[str, dict] = {name: {"images": 0, "wall_s": 0.0, "cpu_s": 0.0} for name in methods}
    splits = {**nyala_splits(), **(looks or {})}
    fins = fin_check()
    for name, method in methods.items():
        for set_name, split in splits.items():
            paths = [*split.gallery, *split.queries]
            features, cost = timed_embed(method.embed, paths)
            _add(timing[name], cost)
            gallery_x, query_x = prepare(features[:len(split.gallery)], features[len(split.gallery):], method.centre)
            entry = sets.setdefault(set_name, {"split": split.summary(), "methods": {}})
            entry["split"]["map5_always_new"] = round(float(np.mean(np.asarray(split.truths) == NEW_INDIVIDUAL)), 4)
            entry["methods"][name] = {
                **score_open_set(split, gallery_x, query_x), **cost}
            if rerank is not None and name in rerank.methods:
                entry["methods"][f"{name}+sift"] = rerank.open_set(split, gallery_x, query_x)
            if log:
                log.info("%s %s: %s", set_name, name, {k: v for k, v in sets[set_name]["methods"][name].items()
                                                        if k.startswith(("map5", "known"))})
        if fins is not None:
            features, cost = timed_embed(method.embed, [*fins.gallery, *fins.queries])
            _add(timing[name], cost)
            gallery_x, query_x = prepare(features[:len(fins.gallery)], features[len(fins.gallery):], method.centre)
            sets.setdefault("fins", {"gallery_photos": len(fins.gallery), "queries": [q.name for q in fins.queries],
                                     "methods": {}})["methods"][name] = {**score_closed(fins, gallery_x, query_x),
                                                                         **cost}
            if rerank is not None and name in rerank.methods:
                sets["fins"]["methods"][f"{name}+sift"] = rerank.closed(fins, gallery_x, query_x)
    costs = {name: {"images": t["images"], "ms_per_image": round(1000 * t["wall_s"] / t["images"], 2),
                    "cpu_ms_per_image": round(1000 * t["cpu_s"] / t["images"], 2)}
             for name, t in timing.items() if t["images"]}
    result = {"sets": sets, "cost": costs, "methods": {name: m.note for name, m in methods.items()}}
    if rerank is not None:
        for name in rerank.methods:
            if name in costs:
                result["methods"][f"{name}+sift"] = f"{name} re-ranked by SIFT inliers (bench/real_rerank.py)"
                result["cost"][f"{name}+sift"] = {**costs[name], **rerank.cost()}
    boxes = happywhale_boxes()
    if boxes is not None:
        result["happywhale_boxes"] = localisation(boxes, detector, detector_note, cam)
    return result if (sets or boxes is not None) else {}


def _add(total: dict, cost: dict) -> None:
    total["images"] += cost["images"]
    total["wall_s"] += cost["ms_per_image"] * cost["images"] / 1000
    total["cpu_s"] += cost["cpu_ms_per_image"] * cost["images"] / 1000


def table(real: dict) -> str:
    """The readable table of `run`'s result."""
    if not real:
        return "real sets: ../shared/data absent, skipped"
    methods = list(real["methods"])
    width = max(14, *(len(m) + 2 for m in methods))
    lines = [f"{'real set / figure':<40}" + "".join(f"{m:>{width}}" for m in methods)]

    def row(label, values):
        lines.append(f"{label:<40}" + "".join(f"{v:>{width}}" for v in values))

    def fmt(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    for set_name, entry in real["sets"].items():
        figures = entry["methods"]
        if "split" in entry:  # nyala and the synthetic looks
            s = entry["split"]
            lines.append(f"{set_name}: gallery {s['gallery_photos']} photos of {s['gallery_individuals']}, queries "
                         f"{s['known_queries']} known + {s['new_queries']} new ({s['new_individuals']} individuals); "
                         f"always answering new: MAP@5 {s['map5_always_new']:.3f}")
            for key, label in (("map5_cross_fitted", "  MAP@5 cross-fitted threshold"),
                               ("map5_calibrated_default", "  MAP@5 calibrated default (gallery)"),
                               ("map5_best_optimistic", "  MAP@5 best threshold (OPTIMISTIC)"),
                               ("known_top1", "  known top-1")):
                row(label, [fmt(figures.get(m, {}).get(key)) for m in methods])
            row("  calibrated / best threshold",
                [f"{fmt(figures[m]['calibrated_threshold'], 2)}/{fmt(figures[m]['best_threshold_optimistic'], 2)}"
                 if m in figures else "-" for m in methods])
            view = {m: figures[m]["viewpoint"] for m in methods if m in figures}
            first = next(iter(view.values()), {})
            row(f"  top-1, gallery of same flank (n={first.get('queries_same_flank')})",
                [fmt(view.get(m, {}).get("known_top1_same_flank")) for m in methods])
            row(f"  top-1, gallery of other flank (n={first.get('queries_other_flank')})",
                [fmt(view.get(m, {}).get("known_top1_other_flank")) for m in methods])
            row(f"  best true photo same flank (n={first.get('queries_both_flanks_in_gallery')})",
                [fmt(view.get(m, {}).get("best_photo_same_flank")) for m in methods])
            means = {m: figures[m].get("viewpoint_gallery", {}) for m in methods if m in figures}
            for references, label in (("means", "mean / individual"),
                                      ("viewpoint-means", "mean / (individual, flank)")):
                for key, what in (("map5_cross_fitted", "MAP@5 cf"), ("known_top1", "top-1")):
                    row(f"  {what}, {label}", [fmt(means.get(m, {}).get(references, {}).get(key)) for m in methods])
        elif set_name == "fins":
            lines.append(f"fins: gallery {entry['gallery_photos']} photos, queries {', '.join(entry['queries'])}")
            row("  rank of 5412 (a, b)", ["/".join(">50" if r is None else str(r) for r in figures[m]["rank_of_truth"])
                                          if m in figures
                                          else "-" for m in methods])
            row("  MAP@5 (no new_individual)", [fmt(figures.get(m, {}).get("map5")) for m in methods])
    cost = real.get("cost", {})
    row("CPU ms / image (process CPU)", [fmt(cost.get(m, {}).get("cpu_ms_per_image"), 1) for m in methods])
    row("wall ms / image", [fmt(cost.get(m, {}).get("ms_per_image"), 1) for m in methods])
    if any("match_cpu_ms_per_query" in cost.get(m, {}) for m in methods):
        row("  + SIFT CPU ms / image (extraction)", [fmt(cost.get(m, {}).get("sift_cpu_ms_per_image"), 1)
                                                    for m in methods])
        row("  + matching CPU ms / query", [fmt(cost.get(m, {}).get("match_cpu_ms_per_query"), 1) for m in methods])
    boxes = real.get("happywhale_boxes")
    if boxes:
        lines.append(f"happywhale boxes: {boxes['photos']} photos ({boxes['sources']} source photos), "
                     f"{boxes['true_boxes']} true boxes; IoU with the best-matching box")
        lines.append(f"  {'localiser':<28}{'mean IoU by source':>20}{'per photo':>12}{'IoU>=0.5':>10}{'ms/photo':>10}")
        entries = [("whole frame (no crop)", boxes["whole_frame"])]
        if "mean_iou_by_source" in boxes.get("detector", {}):
            entries += [("detector (raw box)", boxes["detector"]), ("detector as served", boxes["detector"]["served"])]
        if "cam" in boxes:
            entries += [(f"CAM {boxes['cam']['backbone']} (raw box)", boxes["cam"]),
                        ("CAM as served", boxes["cam"]["served"])]
        for label, e in entries:
            lines.append(f"  {label:<28}{e['mean_iou_by_source']:>20.3f}{e['mean_iou_per_photo']:>12.3f}"
                         f"{e['iou_at_0_5']:>10.3f}{fmt(e.get('ms_per_photo'), 1):>10}")
        if boxes.get("detector", {}).get("note"):
            lines.append(f"  detector: {boxes['detector']['note']}")
    return "\n".join(lines)
