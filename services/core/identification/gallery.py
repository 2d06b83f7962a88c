"""The gallery: known animals' L2-normalised embeddings in a FAISS inner-product index.

Index by size (configurable in `IndexConfig`): exact `IndexFlatIP` up to `exact_max_size` vectors, above it HNSW
(default) or IVF-PQ. `save(dir)` writes embeddings.npy, entries.jsonl (image, individual_id, species, metadata) and
manifest.json (format version, model ids, dimension, count, sha256 of each file); `Gallery.load(dir)` refuses files
that do not match their manifest.

References (`build_reference_gallery`): `photos`, one row per photo (the search then takes each individual's best
photo), or `means`, one row per individual: the renormalised mean of its photos' embeddings (a prototype; its
metadata keeps `photos`, the count, and `norm`, the mean's length before renormalising, so that photos added later
can be folded into it exactly). Means rank better: on the demo's model, fresh photos of its individuals get the
right individual first 59 % of the time with means, 52 % with photos (319 fresh renders), as averaging the looks of an
animal cancels much of each photo's pose and light. `viewpoint-means`: one mean per (individual, viewpoint), the
photos' viewpoint hints (services.core.identification.viewpoint; a photo without one joins its individual's
unknown-viewpoint mean), so that a left and a right flank are not averaged into one vector; image
`mean/<individual_id>` or `mean/<individual_id>@<viewpoint>`, metadata `viewpoint`. The answer stays per
individual (ranking takes each individual's best row). Without any hint it is `means`, row for row.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

from services.core.checksums import sha256_file
from services.core.errors import DataError
from services.core.identification.vectors import as_embeddings, check_normalised, l2_normalise

log = logging.getLogger(__name__)

FORMAT = "whaleid-gallery"
FORMAT_VERSION = 1
EMBEDDINGS_FILE = "embeddings.npy"
ENTRIES_FILE = "entries.jsonl"
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
INDEX_KINDS = ("flat", "hnsw", "ivfflat", "ivfpq")
REFERENCES = ("photos", "means", "viewpoint-means")  # rows: per photo, per individual, per (individual, viewpoint)
MEAN_IMAGE_PREFIX = "mean/"  # image id of an individual's mean row


@dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index a gallery uses; `exact_max_size` and below always get the exact IndexFlatIP."""

    exact_max_size: int = 100_000
    approximate: str = "ivfflat"  # "ivfflat" | "hnsw" | "ivfpq" | "flat" (always exact)
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 256
    ivf_nlist: int = 0  # 0: about 4 * sqrt(N)
    ivf_pq_bytes: int = 64  # PQ sub-quantisers per vector; must divide the dimension
    ivf_pq_bits: int = 8  # bits per sub-quantiser code
    ivf_nprobe: int = 128  # lists searched per query (recall@5 1.000 at 1M x 512, nlist 4096; 0.969 at 64)

    def __post_init__(self):
        if self.approximate not in INDEX_KINDS:
            raise DataError(f"index kind {self.approximate!r} unknown; expected one of {', '.join(INDEX_KINDS)}")

    def kind_for(self, size: int) -> str:
        return "flat" if size <= self.exact_max_size else self.approximate


def build_index(embeddings: np.ndarray, config: IndexConfig) -> faiss.Index:
    """A FAISS inner-product index over `embeddings` (already normalised), chosen by size."""
    n, dim = embeddings.shape
    kind = config.kind_for(n)
    start = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.hnsw.efSearch = config.hnsw_ef_search
    else:
        nlist = config.ivf_nlist or max(1, int(4 * np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivfflat":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            if dim % config.ivf_pq_bytes:
                raise DataError(f"IVF-PQ: ivf_pq_bytes={config.ivf_pq_bytes} does not divide the dimension {dim}")
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, config.ivf_pq_bytes, config.ivf_pq_bits,
                                     faiss.METRIC_INNER_PRODUCT)
        index.train(embeddings[np.random.default_rng(0).permutation(n)[: max(nlist * 40, 256 * 40)]])
        index.nprobe = min(config.ivf_nprobe, nlist)
    _add_in_chunks(index, embeddings)
    if kind != "flat":
        log.info("built %s index over %d x %d in %.1f s", kind, n, dim, time.perf_counter() - start)
    return index


def _add_in_chunks(index: faiss.Index, embeddings: np.ndarray, chunk: int = 100_000) -> None:
    n = embeddings.shape[0]
    for begin in range(0, n, chunk):
        index.add(embeddings[begin : begin + chunk])
        if n > chunk:
            log.info("indexed %d / %d vectors", min(begin + chunk, n), n)


@dataclass(eq=False)
class Gallery:
    """Embeddings (N, D) with, per row, the individual id, species, image id and optional metadata."""

    embeddings: np.ndarray
    individual_ids: list[str]
    species: list[str]
    images: list[str]
    metadata: list[dict[str, Any]] = field(default_factory=list)
    model_ids: list[str] = field(default_factory=list)
    index_config: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self):
        self.embeddings = l2_normalise(as_embeddings(self.embeddings, what="gallery embeddings"), "gallery embeddings")
        n = self.embeddings.shape[0]
        if n == 0:
            raise DataError("the gallery is empty: it needs at least one embedding")
        self.individual_ids = [str(v) for v in self.individual_ids]
        self.species = [str(v) for v in self.species]
        self.images = [str(v) for v in self.images]
        self.metadata = list(self.metadata) or [{} for _ in range(n)]
        lengths = {"individual_ids": len(self.individual_ids), "species": len(self.species),
                   "images": len(self.images), "metadata": len(self.metadata)}
        wrong = {name: length for name, length in lengths.items() if length != n}
        if wrong:
            raise DataError(f"gallery: {n} embeddings but " + ", ".join(f"{v} {k}" for k, v in wrong.items()))
        empty = [i for i, v in enumerate(self.individual_ids) if not v.strip()]
        if empty:
            raise DataError(f"gallery: empty individual_id in rows {empty[:10]}")
        if "new_individual" in self.individual_ids:
            rows = [i for i, v in enumerate(self.individual_ids) if v == "new_individual"][:10]
            raise DataError(f"gallery: 'new_individual' is not an individual (rows {rows})")
        self._index: faiss.Index | None = None

    # --- basic facts
    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dimension(self) -> int:
        return self.embeddings.shape[1]

    @property
    def index_kind(self) -> str:
        return self.index_config.kind_for(len(self))

    @property
    def index(self) -> faiss.Index:
        if self._index is None:
            self._index = build_index(self.embeddings, self.index_config)
        return self._index

    # --- search
    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Inner products (Q, k) and gallery rows (Q, k), best first; row -1 (score -inf) where fewer exist."""
        queries = l2_normalise(as_embeddings(queries, self.dimension, "query embeddings"), "query embeddings")
        if k < 1:
            raise DataError(f"search: k must be >= 1, got {k}")
        k = min(k, len(self))
        scores, rows = self.index.search(queries, k)
        scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
        return scores, rows

    # --- changes
    def add(self, embeddings, individual_ids, species, images, metadata=None) -> "Gallery":
        """A new gallery with these rows appended (the index is rebuilt lazily)."""
        other = Gallery(embeddings, individual_ids, species, images, metadata or [], self.model_ids,
                        self.index_config)
        if other.dimension != self.dimension:
            raise DataError(f"gallery add: dimension {other.dimension} != gallery dimension {self.dimension}")
        return Gallery(np.concatenate([self.embeddings, other.embeddings]),
                       self.individual_ids + other.individual_ids, self.species + other.species,
                       self.images + other.images, self.metadata + other.metadata, self.model_ids,
                       self.index_config)

    def with_index_config(self, config: IndexConfig) -> "Gallery":
        return dataclasses.replace(self, index_config=config)

    # --- persistence
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / EMBEDDINGS_FILE, self.embeddings)
        with open(directory / ENTRIES_FILE, "w") as fh:
            for image, ind, sp, meta in zip(self.images, self.individual_ids, self.species, self.metadata, strict=True):
                fh.write(json.dumps({"image": image, "individual_id": ind, "species": sp, "metadata": meta}, default=str) + "\n")
        files = [EMBEDDINGS_FILE, ENTRIES_FILE]
        if self.index_kind != "flat":
            faiss.write_index(self.index, str(directory / INDEX_FILE))
            files.append(INDEX_FILE)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "model_ids": list(self.model_ids),
            "dimension": self.dimension, "count": len(self), "individuals": len(set(self.individual_ids)),
            "index": {"kind": self.index_kind, **dataclasses.asdict(self.index_config)},
            "files": {name: sha256_file(directory / name) for name in files},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Gallery":
        directory = Path(directory)
        manifest = _read_manifest(directory)
        for name, digest in manifest["files"].items():
            path = directory / name
            if not path.is_file():
                raise DataError(f"gallery {directory}: {name} is listed in the manifest but missing")
            if sha256_file(path) != digest:
                raise DataError(f"gallery {directory}: {name} does not match its manifest checksum "
                                "(modified or corrupt); refusing to load it")
        embeddings = np.load(directory / EMBEDDINGS_FILE, allow_pickle=False)
        entries = [json.loads(line) for line in (directory / ENTRIES_FILE).read_text().splitlines() if line]
        if embeddings.shape != (manifest["count"], manifest["dimension"]) or len(entries) != manifest["count"]:
            raise DataError(f"gallery {directory}: shape {embeddings.shape} and {len(entries)} entries do not match "
                            f"the manifest ({manifest['count']} x {manifest['dimension']})")
        check_normalised(embeddings, f"gallery {directory} embeddings")
        index_fields = {f.name for f in dataclasses.fields(IndexConfig)}
        config = IndexConfig(**{k: v for k, v in manifest.get("index", {}).items() if k in index_fields})
        gallery = cls(embeddings, [e["individual_id"] for e in entries], [e["species"] for e in entries],
                      [e["image"] for e in entries], [e.get("metadata", {}) for e in entries],
                      list(manifest.get("model_ids", [])), config)
        if INDEX_FILE in manifest["files"]:
            index = faiss.read_index(str(directory / INDEX_FILE))
            if index.ntotal != len(gallery) or index.d != gallery.dimension:
                raise DataError(f"gallery {directory}: {INDEX_FILE} holds {index.ntotal} x {index.d}, "
                                f"expected {len(gallery)} x {gallery.dimension}")
            if isinstance(index, faiss.IndexHNSW):
                index.hnsw.efSearch = config.hnsw_ef_search
            elif isinstance(index, faiss.IndexIVF):
                index.nprobe = min(config.ivf_nprobe, index.nlist)
            gallery._index = index
        return gallery


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"gallery {directory}: no {MANIFEST_FILE}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"gallery {directory}: cannot read {MANIFEST_FILE}: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"gallery {directory}: {MANIFEST_FILE} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"gallery {directory}: format version {manifest.get('format_version')} is not supported "
                        f"(this version reads {FORMAT_VERSION})")
    for key in ("dimension", "count", "files"):
        if key not in manifest:
            raise DataError(f"gallery {directory}: {MANIFEST_FILE} lacks {key!r}")
    return manifest


def build_gallery(
    embeddings,
    individual_ids: Sequence[str],
    species: Sequence[str],
    images: Sequence[str],
    metadata: Sequence[dict[str, Any]] | None = None,
    model_ids: Sequence[str] = (),
    index_config: IndexConfig | None = None,
) -> Gallery:
    """Convenience constructor used by `evaluate`, `predict` and reindexing."""
    return Gallery(embeddings, list(individual_ids), list(species), list(images), list(metadata or []),
                   list(model_ids), index_config or IndexConfig())


def individual_means(embeddings, individual_ids: Sequence[str], species: Sequence[str],
                     viewpoints: Sequence[str | None] | None = None):
    """Per individual (sorted ids): the renormalised mean of its photos' normalised embeddings, its most frequent
    species (ties: the first in name order), its photo count and the mean's norm before renormalising.
    Returns (means (I, D), ids, species, counts, norms). With `viewpoints` (one hint or None per photo): one mean
    per (individual, viewpoint), sorted by id then viewpoint (unknown first); ids then repeat, and
    `viewpoint_groups` gives each row's viewpoint."""
    vectors = l2_normalise(as_embeddings(embeddings, what="gallery embeddings"), "gallery embeddings")
    if vectors.shape[0] == 0:
        raise DataError("the gallery is empty: it needs at least one embedding")
    ids = [str(v) for v in individual_ids]
    if len(ids) != vectors.shape[0] or len(species) != vectors.shape[0]:
        raise DataError(f"individual means: {vectors.shape[0]} embeddings, {len(ids)} ids, {len(species)} species")
    views = _viewpoint_list(viewpoints, len(ids))
    rows: dict[tuple[str, str], list[int]] = {}
    for row, (individual, view) in enumerate(zip(ids, views, strict=True)):
        rows.setdefault((individual, view), []).append(row)
    groups = sorted(rows)
    sums = np.stack([vectors[rows[group]].sum(axis=0, dtype=np.float64) for group in groups])
    counts = np.array([len(rows[group]) for group in groups])
    norms = np.linalg.norm(sums, axis=1) / counts
    kinds = []
    for group in groups:
        tally: dict[str, int] = {}
        for row in rows[group]:
            tally[str(species[row])] = tally.get(str(species[row]), 0) + 1
        kinds.append(min(tally, key=lambda s: (-tally[s], s)))
    names = [name for name, _ in groups]
    zero = [name for name, norm in zip(names, norms, strict=True) if norm < 1e-6]
    if zero:
        raise DataError(f"individual means: the photos of {zero[:10]} cancel out (mean of length 0)")
    return l2_normalise(sums.astype(np.float32)), names, kinds, counts, norms


def _viewpoint_list(viewpoints, n: int) -> list[str]:
    """One grouping key per photo: its viewpoint, '' when unknown (or when no hints are given)."""
    if viewpoints is None:
        return [""] * n
    views = ["" if v is None else str(v) for v in viewpoints]
    if len(views) != n:
        raise DataError(f"gallery: {n} photos but {len(views)} viewpoints")
    return views


def viewpoint_groups(individual_ids: Sequence[str], viewpoints: Sequence[str | None] | None) -> list[str]:
    """The viewpoint of each row of `individual_means(..., viewpoints)` ('' = unknown), in its order."""
    return [view for _, view in sorted(set(zip([str(v) for v in individual_ids],
                                               _viewpoint_list(viewpoints, len(individual_ids)), strict=True)))]


def build_reference_gallery(
    embeddings,
    individual_ids: Sequence[str],
    species: Sequence[str],
    images: Sequence[str],
    references: str = "photos",
    metadata: Sequence[dict[str, Any]] | None = None,
    model_ids: Sequence[str] = (),
    index_config: IndexConfig | None = None,
    viewpoints: Sequence[str | None] | None = None,
) -> Gallery:
    """The gallery of labelled photos as `references` rows (REFERENCES; see the module docstring): `photos` is
    `build_gallery`; `means` has one row per individual, image `mean/<individual_id>`, metadata
    {reference: mean, photos, norm}; `viewpoint-means` one row per (individual, `viewpoints` hint)."""
    if references not in REFERENCES:
        raise DataError(f"gallery references {references!r} unknown; expected one of {', '.join(REFERENCES)}")
    if references == "photos":
        return build_gallery(embeddings, individual_ids, species, images, metadata, model_ids, index_config)
    if len(images) != len(individual_ids):
        raise DataError(f"gallery: {len(individual_ids)} ids but {len(images)} images")
    views = viewpoints if references == "viewpoint-means" else None
    means, names, kinds, counts, norms = individual_means(embeddings, individual_ids, species, views)
    groups = viewpoint_groups(individual_ids, views)
    meta = [{"reference": "mean", "photos": int(c), "norm": round(float(n), 6), **({"viewpoint": v} if v else {})}
            for c, n, v in zip(counts, norms, groups, strict=True)]
    rows = [MEAN_IMAGE_PREFIX + n + (f"@{v}" if v else "") for n, v in zip(names, groups, strict=True)]
    return build_gallery(means, names, kinds, rows, meta, model_ids, index_config)
