"""Local-feature re-ranking (issue #21 item 6): keypoints of a query matched against the gallery photos of its top-k
candidate individuals, verified geometrically, fused with the embedding score.

numpy only, like the rest of the identification core: the descriptors are made elsewhere
(`services.core.keypoints`, OpenCV SIFT, in `whaleid evaluate`/`predict`, the worker and gallery build); here they
are stored compactly, matched and counted:
  1. `LocalFeatures`: keypoint coordinates (float16, pixels of the image resized to at most `MAX_SIDE`) and raw SIFT
     descriptors (uint8, 128 each); `to_bytes`/`from_bytes` a versioned binary form (about 132 bytes a keypoint);
  2. `inliers(a, b)`: RootSIFT nearest neighbours with Lowe's ratio test, then a RANSAC affine transform
     (fixed seed, so the count is reproducible) and the number of matches it explains within `tolerance_px`;
  3. `rerank_detailed(candidates, ...)` (`rerank`: its candidates alone): for each query, each of its top `k`
     individuals gets the most inliers over its gallery photos (`candidate_inliers`: the (query, photo) pairs on a
     pool of threads, the same counts as one thread); fused score = embedding score + weight * min(inliers, cap) /
     cap; the candidates are re-sorted. The threshold for `new_individual` applies to the fused scores, so it is
     tuned on them.
  4. `FeatureBank`: the gallery photos' LocalFeatures by individual, one file beside a gallery version (`BANK_FILE`).
"""

from __future__ import annotations

import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from services.core.errors import DataError
from services.core.identification.evaluation import group_parts
from services.core.identification.ranking import NEW_INDIVIDUAL, Candidates, average_precisions

FORMAT_VERSION = 1
DESCRIPTOR_SIZE = 128
_HEADER = struct.Struct("<BBHH")  # version, descriptor size / 8 (unused bits), keypoints, reserved
MIN_MATCHES = 4


@dataclass(frozen=True)
class RerankConfig:
    """The parameters of re-ranking (tuning.json `rerank`, written by `evaluate --rerank sift`): `weight` of the inlier term
    (chosen out of fold), `cap` inliers count as certain, the `k` best individuals re-ranked, `ratio` of Lowe's test,
    `tolerance_px` of RANSAC, `iterations` RANSAC hypotheses, `photos` per individual compared at most (its
    best-scoring ones by embedding, when the caller orders them)."""

    weight: float = 0.3
    cap: int = 20
    k: int = 5
    ratio: float = 0.8
    tolerance_px: float = 8.0
    iterations: int = 200
    photos: int = 8

    def with_weight(self, weight: float) -> "RerankConfig":
        return RerankConfig(weight, self.cap, self.k, self.ratio, self.tolerance_px, self.iterations, self.photos)


@dataclass
class LocalFeatures:
    """Keypoints (n, 2) float16 pixel coordinates and raw SIFT descriptors (n, 128) uint8."""

    points: np.ndarray
    descriptors: np.ndarray

    def __post_init__(self):
        self.points = np.asarray(self.points, np.float16).reshape(-1, 2)
        self.descriptors = np.asarray(self.descriptors, np.uint8).reshape(-1, DESCRIPTOR_SIZE)
        if len(self.points) != len(self.descriptors):
            raise DataError(f"local features: {len(self.points)} keypoints but {len(self.descriptors)} descriptors")

    def __len__(self) -> int:
        return len(self.points)

    @classmethod
    def empty(cls) -> "LocalFeatures":
        return cls(np.zeros((0, 2), np.float16), np.zeros((0, DESCRIPTOR_SIZE), np.uint8))

    def to_bytes(self) -> bytes:
        return (_HEADER.pack(FORMAT_VERSION, DESCRIPTOR_SIZE // 8, len(self), 0)
                + self.points.astype("<f2").tobytes() + self.descriptors.tobytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> "LocalFeatures":
        if len(data) < _HEADER.size:
            raise DataError("local features: truncated header")
        version, size8, count, _ = _HEADER.unpack_from(data)
        if version != FORMAT_VERSION or size8 * 8 != DESCRIPTOR_SIZE:
            raise DataError(f"local features: format {version}/{size8 * 8} is not {FORMAT_VERSION}/{DESCRIPTOR_SIZE}")
        start, middle = _HEADER.size, _HEADER.size + 4 * count
        if len(data) != middle + DESCRIPTOR_SIZE * count:
            raise DataError(f"local features: {len(data)} bytes do not hold {count} keypoints")
        points = np.frombuffer(data, "<f2", 2 * count, start).reshape(count, 2)
        descriptors = np.frombuffer(data, np.uint8, DESCRIPTOR_SIZE * count, middle).reshape(count, DESCRIPTOR_SIZE)
        return cls(points, descriptors)

    def root_sift(self) -> np.ndarray:
        """RootSIFT (Arandjelovic & Zisserman 2012): sqrt of the L1-normalised descriptor, unit L2 norm (computed
        once per object: gallery photos are matched against many queries)."""
        if getattr(self, "_root", None) is None:
            d = self.descriptors.astype(np.float32)
            self._root = np.sqrt(d / np.maximum(d.sum(axis=1, keepdims=True), 1e-7))
        return self._root


BANK_FILE = "local_features.bin"  # beside a gallery version's files (gallery build, the matcher)
_BANK_MAGIC = b"WLFB"
_BANK_HEADER = struct.Struct("<4sBI")  # magic, format version, individuals
_U16, _U32 = struct.Struct("<H"), struct.Struct("<I")


class FeatureBank:
    """The gallery photos' local features by individual (at most a few photos each, best first), stored beside a
    gallery version as one binary file (`BANK_FILE`): magic, version, then per individual its id (UTF-8) and its
    photos' `LocalFeatures.to_bytes`, each length-prefixed."""

    def __init__(self, by_individual: dict[str, list[LocalFeatures]] | None = None):
        self.by_individual = {str(k): list(v) for k, v in (by_individual or {}).items()}

    def photos_of(self, individual_id: str) -> list[LocalFeatures]:
        return self.by_individual.get(str(individual_id), [])

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_individual.values())

    def size_bytes(self) -> int:
        """len(self.to_bytes()), without making it (a bank is about 100 kB a photo)."""
        return _BANK_HEADER.size + sum(
            _U16.size + len(individual.encode("utf-8")) + _U16.size
            + sum(_U32.size + _HEADER.size + (4 + DESCRIPTOR_SIZE) * len(f) for f in photos)
            for individual, photos in self.by_individual.items())

    def to_bytes(self) -> bytes:
        parts = [_BANK_HEADER.pack(_BANK_MAGIC, FORMAT_VERSION, len(self.by_individual))]
        for individual, photos in self.by_individual.items():
            name = individual.encode("utf-8")
            parts += [_U16.pack(len(name)), name, _U16.pack(len(photos))]
            for features in photos:
                data = features.to_bytes()
                parts += [_U32.pack(len(data)), data]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> "FeatureBank":
        view = memoryview(data)
        try:
            magic, version, count = _BANK_HEADER.unpack_from(view, 0)
            if magic != _BANK_MAGIC or version != FORMAT_VERSION:
                raise DataError(f"local features bank: not a version {FORMAT_VERSION} bank ({bytes(magic)!r}, {version})")
            at, out = _BANK_HEADER.size, {}
            for _ in range(count):
                (size,), at = _U16.unpack_from(view, at), at + _U16.size
                name, at = bytes(view[at:at + size]).decode("utf-8"), at + size
                (photos,), at = _U16.unpack_from(view, at), at + _U16.size
                out[name] = []
                for _ in range(photos):
                    (size,), at = _U32.unpack_from(view, at), at + _U32.size
                    if at + size > len(view):
                        raise DataError("local features bank: truncated")
                    out[name].append(LocalFeatures.from_bytes(bytes(view[at:at + size])))
                    at += size
        except (struct.error, UnicodeDecodeError) as exc:
            raise DataError(f"local features bank: truncated or corrupt ({exc})") from None
        if at != len(view):
            raise DataError(f"local features bank: {len(view) - at} bytes after the last individual")
        return cls(out)

    def check_individuals(self, individual_ids) -> None:
        """DataError unless this bank can serve a gallery of `individual_ids`: every individual it holds is in the
        gallery, and it holds some photo (a gallery individual without photos here is ranked by its embedding)."""
        known = set(map(str, individual_ids))
        strays = sorted(set(self.by_individual) - known)
        if strays:
            shown = ", ".join(strays[:5]) + (f" and {len(strays) - 5} more" if len(strays) > 5 else "")
            raise DataError(f"local features bank: {len(strays)} of its {len(self.by_individual)} individuals are "
                            f"not in the gallery ({shown}): made for another gallery")
        if len(self) == 0:
            raise DataError("local features bank: it holds no photo")

    def save(self, directory) -> Path:
        path = Path(directory) / BANK_FILE
        path.write_bytes(self.to_bytes())
        return path

    @classmethod
    def load(cls, directory) -> "FeatureBank | None":
        """The bank beside a gallery's files; None when the version has none."""
        path = Path(directory) / BANK_FILE
        return cls.from_bytes(path.read_bytes()) if path.is_file() else None


def ratio_matches(a: np.ndarray, b: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into a, into b) of a's nearest neighbours in b that pass Lowe's ratio test (unit vectors)."""
    if len(a) == 0 or len(b) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    similarity = a @ b.T
    rows = np.arange(len(a))
    nearest = similarity.argmax(axis=1)
    first = similarity[rows, nearest]
    similarity[rows, nearest] = -np.inf
    second = similarity.max(axis=1)
    d1, d2 = np.maximum(2.0 - 2.0 * first, 0.0), np.maximum(2.0 - 2.0 * second, 0.0)  # squared L2 (unit vectors)
    keep = d1 < (ratio * ratio) * d2
    return np.flatnonzero(keep), nearest[keep]


def ransac_affine_inliers(source: np.ndarray, target: np.ndarray, tolerance: float, iterations: int,
                          seed: int = 0) -> int:
    """The most matches one affine transform (from 3 random matches) maps within `tolerance` pixels."""
    count = len(source)
    if count < MIN_MATCHES:
        return 0
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, count, (iterations, 3))  # (H, 3); a repeated match gives det 0 and is dropped
    design = np.concatenate([source[picks], np.ones((iterations, 3, 1))], axis=2)  # (H, 3, 3)
    usable = np.abs(np.linalg.det(design)) > 1e-3
    if not usable.any():
        return 0
    transforms = np.linalg.solve(design[usable], target[picks[usable]])  # (H', 3, 2)
    # each match mapped by each hypothesis, x' = x * t00 + y * t10 + t20 (y' alike), in elementwise steps: the
    # same float64 values as einsum("mk,hkj->hmj") over the homogeneous points, about 10x faster
    x, y = source[None, :, 0], source[None, :, 1]  # (1, m)
    dx = x * transforms[:, 0, 0:1] + y * transforms[:, 1, 0:1] + transforms[:, 2, 0:1] - target[None, :, 0]
    dy = x * transforms[:, 0, 1:2] + y * transforms[:, 1, 1:2] + transforms[:, 2, 1:2] - target[None, :, 1]
    close = dx * dx + dy * dy <= tolerance * tolerance  # (H', m)
    return int(close.sum(axis=1).max())


def inliers(a: LocalFeatures, b: LocalFeatures, config: RerankConfig = RerankConfig()) -> int:
    """Geometrically verified matches between two photos' local features."""
    if len(a) < MIN_MATCHES or len(b) < MIN_MATCHES:
        return 0
    ia, ib = ratio_matches(a.root_sift(), b.root_sift(), config.ratio)
    if len(ia) < MIN_MATCHES:
        return 0
    return ransac_affine_inliers(a.points[ia].astype(np.float64), b.points[ib].astype(np.float64),
                                 config.tolerance_px, config.iterations)


# Threads that match a batch's (query, photo) pairs when the caller names none (the setting `rerank_workers`'s
# default). 1: numpy's OpenBLAS already spreads each matrix product over the cores, and a second matching thread
# made it oversubscribe (nyala, 2 cores: 2.1x the wall time and 1.7x the CPU of one thread); more threads pay with
# a single-threaded BLAS (OPENBLAS_NUM_THREADS=1), docs/identification.md.
DEFAULT_WORKERS = 1


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """One long-lived pool per size (the matcher re-ranks batch after batch: no threads started per batch)."""
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="rerank")
        return _pools[workers]


def candidate_inliers(candidates: Candidates, queries: Sequence[LocalFeatures | None],
                      photos_of: Callable[[str], Sequence[LocalFeatures]], config: RerankConfig,
                      workers: int = DEFAULT_WORKERS) -> np.ndarray:
    """(Q, k) inliers of each query's top-k individuals: the most over the individual's photos (`photos_of`
    gives them, best first; `config.photos` at most). A query without features keeps zeros.

    The (query, photo) pairs are matched by `workers` threads (1: in this thread; numpy's matrix products and
    RANSAC's array steps run without the GIL). Each pair is counted by the same `inliers` call whatever the
    number of threads, so the result is identical to the sequential one. `photos_of` is called in this thread
    only."""
    k = min(config.k, candidates.ids.shape[1])
    out = np.zeros((len(candidates), k), np.int32)
    pairs: list[tuple[int, int, LocalFeatures, LocalFeatures]] = []
    for q, features in enumerate(queries):
        if features is None or len(features) < MIN_MATCHES:
            continue
        features.root_sift()  # once, before the threads share it
        for c in range(k):
            individual = candidates.ids[q, c]
            if individual:
                pairs += [(q, c, features, p) for p in list(photos_of(str(individual)))[:config.photos]]
    workers = max(1, int(workers))

    def count(pair) -> int:
        return inliers(pair[2], pair[3], config)

    counts = map(count, pairs) if workers == 1 or len(pairs) < 2 else _pool(workers).map(count, pairs)
    for (q, c, _, _), n in zip(pairs, counts, strict=True):
        out[q, c] = max(out[q, c], n)
    return out


def fuse(candidates: Candidates, counts: np.ndarray, weight: float, cap: int) -> Candidates:
    """Embedding score + weight * min(inliers, cap) / cap for the first counts.shape[1] candidates, re-sorted."""
    k = counts.shape[1]
    scores = candidates.scores.astype(np.float32).copy()
    bonus = weight * np.minimum(counts, cap).astype(np.float32) / float(cap)
    present = candidates.ids[:, :k] != ""
    scores[:, :k] = np.where(present, scores[:, :k] + bonus, scores[:, :k])
    order = np.argsort(-scores, axis=1, kind="stable")
    rows = None if candidates.rows is None else np.take_along_axis(candidates.rows, order, axis=1)
    return Candidates(np.take_along_axis(candidates.ids, order, axis=1), np.take_along_axis(scores, order, axis=1),
                      rows)


def rerank_detailed(candidates: Candidates, queries: Sequence[LocalFeatures | None],
                    photos_of: Callable[[str], Sequence[LocalFeatures]], config: RerankConfig = RerankConfig(),
                    workers: int = DEFAULT_WORKERS) -> tuple[Candidates, list[dict[str, int]]]:
    """`candidate_inliers` (`workers` threads) then `fuse` (module docstring), with the inliers of each query's
    re-ranked individuals ({individual_id: inliers}) for reporting (the matcher's answer)."""
    counts = candidate_inliers(candidates, queries, photos_of, config, workers)
    inliers_by_id = [{str(i): int(n) for i, n in zip(ids, row, strict=True) if i} for ids, row in
                     zip(candidates.ids[:, :counts.shape[1]], counts, strict=True)]
    return fuse(candidates, counts, config.weight, config.cap), inliers_by_id


def rerank(candidates: Candidates, queries: Sequence[LocalFeatures | None],
           photos_of: Callable[[str], Sequence[LocalFeatures]], config: RerankConfig = RerankConfig(),
           workers: int = DEFAULT_WORKERS) -> Candidates:
    """`rerank_detailed`'s candidates alone (`whaleid predict`)."""
    return rerank_detailed(candidates, queries, photos_of, config, workers)[0]


WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8)


def fused_precisions(candidates: Candidates, counts: np.ndarray, truths: Sequence[str], cap: int,
                     weights: Sequence[float] = WEIGHTS) -> tuple[np.ndarray, np.ndarray]:
    """(grid (T,), AP@5 (W, T, Q)) of the fused candidates for every weight and threshold; the grid spans the
    fused scores (-0.2 .. 1 + the largest weight, step 0.01)."""
    grid = np.round(np.arange(-0.2, 1.0 + max(weights) + 1e-9, 0.01), 3).astype(np.float32)
    return grid, np.stack([average_precisions(fuse(candidates, counts, float(w), cap), truths, grid)
                           for w in weights])


def tune_rerank(candidates: Candidates, counts: np.ndarray, truths: Sequence[str], cap: int,
                weights: Sequence[float] = WEIGHTS) -> dict:
    """The weight and the threshold (on the fused scores) with the best MAP@5 on these validation queries;
    ties go to the smaller weight, then the lower threshold."""
    grid, precisions = fused_precisions(candidates, counts, truths, cap, weights)
    means = precisions.mean(axis=2)  # (W, T)
    w, t = np.unravel_index(int(np.argmax(means)), means.shape)
    return {"weight": float(weights[w]), "threshold": float(grid[t]), "map5": round(float(means[w, t]), 4),
            "map5_by_weight": {str(float(x)): round(float(m), 4) for x, m in zip(weights, means.max(axis=1),
                                                                                   strict=True)}}


def cross_fitted_rerank(candidates: Candidates, counts: np.ndarray, truths: Sequence[str], groups: Sequence[str],
                        cap: int, weights: Sequence[float] = WEIGHTS, parts: int = 2) -> dict:
    """MAP@5 with the weight AND the threshold chosen out of sample, as tuning.cross_fitted_map5 does for the
    threshold alone (the same parts): each part scored at the (weight, threshold) best on the others; `known_top1`
    of the known queries at the weight chosen on the other parts."""
    truths = np.asarray(truths, dtype=object)
    part = group_parts(groups, parts)
    grid, precisions = fused_precisions(candidates, counts, truths, cap, weights)
    held_out, hits = np.zeros(len(candidates)), np.zeros(len(candidates), bool)
    chosen = []
    for index in range(parts):
        inside, outside = part != index, part == index
        if not outside.any():
            continue
        means = precisions[:, :, inside].mean(axis=2) if inside.any() else np.zeros(precisions.shape[:2])
        w, t = np.unravel_index(int(np.argmax(means)), means.shape)
        chosen.append({"weight": float(weights[w]), "threshold": round(float(grid[t]), 3)})
        held_out[outside] = precisions[w, t, outside]
        hits[outside] = fuse(candidates, counts, float(weights[w]), cap).ids[outside, 0] == truths[outside]
    known = truths != NEW_INDIVIDUAL
    return {"map5": round(float(held_out.mean()), 4), "chosen": chosen,
            "in_sample": round(float(precisions.mean(axis=2).max()), 4),
            "known_top1": round(float(hits[known].mean()), 4) if known.any() else None}
