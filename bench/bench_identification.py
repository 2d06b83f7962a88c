"""Identification search speed at scale, measured side by side in one run.

1. `exact`: FAISS IndexFlatIP against numpy brute force (matrix product + top-5) at `--exact-size` (default
   50k) x 512, batched and one query at a time, per-query milliseconds and the ratio.
2. `scale`: at `--size` (default 1M) gallery embeddings of `--dim` (512, the trained models), side by side:
   exact IndexFlatIP, IVF-Flat and HNSW (`--kinds`; IVF-PQ on request), each with its build time, index bytes
   (serialised) and RSS growth, batched and single-query milliseconds per query, recall@5 against exact search
   and the share of queries whose individual is among the top 5. Approximate indexes use the gallery's own
   IndexConfig (what the matcher serves above `exact_max_size`).
3. `scale.matcher`: the matcher's gallery loading code (services.chain.matcher.matching.Matcher.reload: download,
   Gallery.load with its checksums, the index) in a fresh process on that gallery saved as the served config
   writes it: start-up time and RSS, the first identification, then a hot swap to a second version (the reload
   path): time from the swap's start to its first identification, and the RSS while two versions are held.
   The model store is a local directory here (the download is a file copy; S3 adds its transfer time).

Embeddings are clustered like real galleries: `--size / 5` individuals x 5 noisy photos around a centre (cosine
~0.7 to it), individuals around 30 species centres; queries are new noisy photos of known individuals.
`--quick`: the 100k version (exact part at 10k). Targets: <= 1 ms per query exact at 50k (batched); recall@5
>= 0.98 at 1M.

Measured here (2 shared cores, 1M x 512, one run of 641 s, of which 511 s is the HNSW build; `--kinds flat ivfflat`
skips it): exact 17.9 ms per query batched, 158 ms single; IVF-Flat (nlist 1000, nprobe 32) built in 9.2 s,
2.4 / 3.6 ms (7.5x / 44x faster), recall@5 1.000, 2.06 GB; HNSW (M 32, efConstruction 80, efSearch 256) 1.4 / 2.8
ms but recall@5 0.859 on this isotropic data, 2.32 GB. The matcher: 20 s from start to its first identification,
4.7 GB RSS serving (the gallery's embeddings and the IVF's own copy of them), 6.7 GB peak while loading; a hot swap
21.8 s to the first identification on the new version, 11.0 GB peak while both versions are held. At 1280-d
(the general identifier) every vector copy is 2.5x larger (5.1 GB each), so the swap peak (~27 GB, extrapolated) would not fit
this 24 GB machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from services.core.identification import Gallery, Tuning
from services.core.identification.gallery import IndexConfig, build_index

log = logging.getLogger("bench.identification")
DIM = 512
K = 5
PHOTOS_PER_INDIVIDUAL = 5
# The bench's IVF: nlist sqrt(N) (1,000 at 1M), nprobe 32 - the same 3 % of the lists scanned as the gallery's
# default (4 sqrt(N), 128) at the same recall, with a k-means 16x cheaper: IVF-Flat over 100k x 512 built in 0.7 s
# instead of 7.6 s (recall@5 1.000 both), over 1M in ~20 s instead of 316 s, which keeps the bench within ~10 min.
BENCH_IVF = {"nlist": "sqrt(N)", "nprobe": 32}


def clustered(size: int, queries: int, seed: int, structure: str = "species", latent: int = DIM,
              photos_per_individual: int = PHOTOS_PER_INDIVIDUAL, species: int = 30, individual_spread: float = 1.2,
              photo_noise: float = 1.0, dim: int = DIM):
    """(gallery (size, dim), queries (queries, dim), individual of each query) unit vectors; gallery row r is a
    photo of individual r % (size / photos_per_individual), queries are new photos of gallery animals.

    structure "species": individuals scattered around `species` centres (cosine ~0.64 to their species centre,
    ~0.4 between animals of a species), as embeddings of a species-aware model; "uniform": individuals uniformly
    random on the sphere (no structure above the individual). Photos have cosine ~0.7 to their individual (~0.5
    between two photos of one animal). `latent` < DIM: all of it happens in a random `latent`-dimensional subspace
    (trained embeddings have a low effective rank); `latent` = DIM: isotropic 512-d noise, the hardest case.
    """
    rng = np.random.default_rng(seed)
    full, latent = dim, min(latent, dim)
    dim = latent
    individuals = max(1, size // photos_per_individual)
    centres = rng.standard_normal((individuals, dim), dtype=np.float32)
    if structure == "species":
        tops = _unit(rng.standard_normal((species, dim), dtype=np.float32))
        centres = tops[rng.integers(0, species, size=individuals)] + individual_spread / np.sqrt(dim) * centres
    elif structure != "uniform":
        raise ValueError(f"unknown structure {structure!r}")
    centres = _unit(centres)
    basis = None
    if dim < full:  # orthonormal columns: inner products are those of the latent space
        basis = np.linalg.qr(rng.standard_normal((full, dim)))[0].astype(np.float32).T
    gallery = np.empty((size, full), dtype=np.float32)
    chunk = 100_000
    for start in range(0, size, chunk):
        rows = np.arange(start, min(start + chunk, size)) % individuals
        part = _unit(centres[rows] + photo_noise / np.sqrt(dim) * rng.standard_normal((len(rows), dim),
                                                                                      dtype=np.float32))
        gallery[start:start + len(rows)] = part if basis is None else part @ basis
    picked = rng.integers(0, individuals, size=queries)
    query = _unit(centres[picked] + photo_noise / np.sqrt(dim) * rng.standard_normal((queries, dim), dtype=np.float32))
    return gallery, np.ascontiguousarray(query if basis is None else query @ basis), picked


def _unit(rows: np.ndarray) -> np.ndarray:
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def numpy_top_k(gallery: np.ndarray, queries: np.ndarray, k: int, batch: int = 256) -> np.ndarray:
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch):
        scores = queries[start:start + batch] @ gallery.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start:start + batch] = np.take_along_axis(top, order, axis=1)
    return out


def per_query_ms(func, queries: np.ndarray, repeats: int = 3, budget_s: float = 10.0) -> float:
    """Best of `repeats` timed runs over all `queries` (fewer when one run takes over `budget_s`)."""
    best = float("inf")
    spent = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        func(queries)
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if spent > budget_s:
            break
    return 1000.0 * best / len(queries)


def recall_at_k(exact: np.ndarray, approximate: np.ndarray) -> float:
    return float(np.mean([len(set(e) & set(a)) / len(e) for e, a in zip(exact, approximate, strict=True)]))


def bench_exact(size: int, queries: int, seed: int, structure: str, latent: int) -> dict:
    log.info("exact: %d x %d gallery, %d queries", size, DIM, queries)
    gallery, query, _ = clustered(size, queries, seed, structure, latent)
    index = faiss.IndexFlatIP(DIM)
    index.add(gallery)
    faiss_batched = per_query_ms(lambda q: index.search(q, K), query)
    single = query[:200]
    faiss_single = per_query_ms(lambda q: [index.search(q[i:i + 1], K) for i in range(len(q))], single, repeats=1)
    numpy_batched = per_query_ms(lambda q: numpy_top_k(gallery, q, K), query)
    same = recall_at_k(index.search(query, K)[1], numpy_top_k(gallery, query, K))
    return {
        "size": size, "data": structure, "latent_dim": latent, "queries": queries, "threads": faiss.omp_get_max_threads(),
        "faiss_flat_batched_ms_per_query": round(faiss_batched, 4),
        "faiss_flat_single_ms_per_query": round(faiss_single, 4),
        "numpy_batched_ms_per_query": round(numpy_batched, 4),
        "numpy_over_faiss_batched": round(numpy_batched / faiss_batched, 2),
        "faiss_vs_numpy_top5_agreement": round(same, 4),
        "target_ms_per_query": 1.0,
        "meets_target": faiss_batched <= 1.0,
    }


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (VmRSS) or its peak (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def index_config(kind: str, overrides: dict) -> IndexConfig:
    """The gallery's own IndexConfig with `overrides`, `kind` at every size."""
    return IndexConfig(**{**IndexConfig().__dict__, **overrides, "approximate": kind, "exact_max_size": 0})


def serialised_mb(index: faiss.Index) -> float:
    with tempfile.NamedTemporaryFile(suffix=".faiss") as fh:
        faiss.write_index(index, fh.name)
        return os.path.getsize(fh.name) / 1e6


def _effort(index: faiss.Index) -> dict:
    if isinstance(index, faiss.IndexHNSW):
        return {"M": index.hnsw.nb_neighbors(1), "efConstruction": index.hnsw.efConstruction,
                "efSearch": index.hnsw.efSearch}
    if isinstance(index, faiss.IndexIVF):
        return {"nlist": index.nlist, "nprobe": index.nprobe}
    return {}


def measure_index(kind: str, build, query: np.ndarray, truth: np.ndarray | None, query_individual: np.ndarray,
                  row_individual, single_queries: int) -> tuple[dict, faiss.Index, np.ndarray]:
    """Build (timed, RSS growth), size, batched and single-query latency, recall@5 against `truth` rows."""
    gc.collect()
    rss_before = rss_mb()
    start = time.perf_counter()
    index = build()
    build_s = time.perf_counter() - start
    rss_growth = rss_mb() - rss_before
    log.info("%s: built in %.1f s, searching", kind, build_s)
    batched = per_query_ms(lambda q: index.search(q, K), query, repeats=1 if kind == "flat" else 3)
    single = per_query_ms(lambda q: [index.search(q[i:i + 1], K) for i in range(len(q))], query[:single_queries],
                          repeats=1)
    rows = index.search(query, K)[1]
    hit = np.mean([query_individual[i] in {row_individual(r) for r in rows[i] if r >= 0} for i in range(len(rows))])
    row = {
        "kind": kind, **_effort(index), "build_s": round(build_s, 1), "index_mb": round(serialised_mb(index), 1),
        "rss_growth_mb": round(rss_growth, 1), "batched_ms_per_query": round(batched, 4),
        "single_ms_per_query": round(single, 3),
        "recall_at_5": round(recall_at_k(truth, rows), 4) if truth is not None else 1.0,
        "individual_in_top5": round(float(hit), 4),
    }
    log.info("%s: %s", kind, row)
    return row, index, rows


def bench_scale(size: int, dim: int, queries: int, single_queries: int, kinds: list[str], seed: int, structure: str,
                latent: int, matcher: bool, work: Path | None, overrides: dict | None = None) -> dict:
    """Exact and approximate indexes side by side on one clustered gallery, then the matcher loading it (the
    gallery saved with the IndexConfig the matcher would serve at this size, with `overrides`)."""
    overrides = overrides or {}
    log.info("scale: generating %d x %d (%d individuals x %d photos)", size, dim, size // PHOTOS_PER_INDIVIDUAL,
             PHOTOS_PER_INDIVIDUAL)
    embeddings, query, picked = clustered(size, queries, seed + 1, structure, latent, dim=dim)
    individuals = max(1, size // PHOTOS_PER_INDIVIDUAL)
    gallery = Gallery(embeddings, [f"ind-{r % individuals}" for r in range(size)], ["bench-species"] * size,
                      [f"bench/{r}.jpg" for r in range(size)], [], ["bench-model"],
                      IndexConfig(**{**IndexConfig().__dict__, **overrides}))
    del embeddings
    vectors = gallery.embeddings
    served = gallery.index_kind
    rows_of = {}
    table = []
    truth = None
    for kind in ["flat"] + [k for k in kinds if k != "flat"]:
        build = (lambda: gallery.index) if kind == served else (lambda kind=kind: build_index(vectors, index_config(kind, overrides)))
        row, index, rows = measure_index(kind, build, query, truth, picked, lambda r: r % individuals, single_queries)
        row["served_by_matcher"] = kind == served
        table.append(row)
        rows_of[kind] = rows
        truth = rows_of["flat"]
        del index
    exact = table[0]
    for row in table:
        row["batched_speedup_over_exact"] = round(exact["batched_ms_per_query"] / row["batched_ms_per_query"], 1)
        row["single_speedup_over_exact"] = round(exact["single_ms_per_query"] / row["single_ms_per_query"], 1)
        row["meets_recall_target"] = row["recall_at_5"] >= 0.98
    result = {
        "size": size, "dim": dim, "individuals": individuals, "photos_per_individual": PHOTOS_PER_INDIVIDUAL,
        "data": structure, "latent_dim": min(latent, dim), "queries": queries, "single_queries": single_queries,
        "threads": faiss.omp_get_max_threads(), "embeddings_mb": round(vectors.nbytes / 1e6, 1),
        "served_index": served, "index_config": gallery.index_config.__dict__, "indexes": table, "target_recall_at_5": 0.98,
    }
    if matcher:
        result["matcher"] = bench_matcher_load(gallery, query[0], work)
    return result


def bench_matcher_load(gallery: Gallery, query: np.ndarray, work: Path | None) -> dict:
    """Save `gallery` as two store versions and time the matcher's reload path on them in a fresh process."""
    root = Path(tempfile.mkdtemp(prefix="bench-gallery-", dir=work))
    try:
        start = time.perf_counter()
        gallery.save(root / "v1")
        Tuning().save(root / "v1")
        save_s = time.perf_counter() - start
        (root / "v2").mkdir()
        for path in (root / "v1").iterdir():  # the same gallery as a second version (hard links: no disk)
            os.link(path, root / "v2" / path.name)
        np.save(root / "query.npy", query)
        files_mb = sum(p.stat().st_size for p in (root / "v1").iterdir()) / 1e6
        del gallery
        gc.collect()
        context = multiprocessing.get_context("spawn")
        with context.Pool(1) as pool:
            probe = pool.apply(matcher_probe, (str(root),))
        return {"save_s": round(save_s, 1), "version_files_mb": round(files_mb, 1), **probe}
    finally:
        shutil.rmtree(root, ignore_errors=True)


class DirectoryStore:
    """The model store's read side (GalleryStore.current_version / version_info / download) over a local
    directory of versions, with a `current` file as the pointer; the download is a file copy."""

    def __init__(self, root: Path):
        self.root = root
        self.download_s = 0.0

    def point(self, version: str) -> None:
        (self.root / "current").write_text(version)

    def current_version(self) -> str | None:
        path = self.root / "current"
        return path.read_text() if path.exists() else None

    def version_info(self, version: str) -> dict:
        return {"version": version, "created_at": (self.root / version).stat().st_mtime}

    def download(self, version: str, dest: Path) -> Path:
        start = time.perf_counter()
        for path in (self.root / version).iterdir():
            shutil.copyfile(path, Path(dest) / path.name)
        self.download_s = time.perf_counter() - start
        return Path(dest)


def matcher_probe(root: str) -> dict:
    """In a fresh process: the matcher's start-up (first reload) and a hot swap, each to its first identification."""
    from services.chain.matcher.matching import Matcher
    from services.core import topics
    from services.core.settings import Settings

    store = DirectoryStore(Path(root))
    record = topics.SightingEmbedded(sighting_id="bench-1", model_version="bench-model",
                                     embedding=np.load(Path(root) / "query.npy").tolist())
    matcher = Matcher(Settings(), store)
    rss_start = rss_mb()
    store.point("v1")
    start = time.perf_counter()
    matcher.reload()
    load_s = time.perf_counter() - start
    first = matcher.identify([record])[0]
    first_s = time.perf_counter() - start
    loaded = {"rss_mb": rss_mb(), "peak_rss_mb": rss_mb("VmHWM"), "download_s": store.download_s}
    store.point("v2")
    start = time.perf_counter()
    swapped = matcher.reload()
    swap_load_s = time.perf_counter() - start
    after = matcher.identify([record])[0]
    swap_s = time.perf_counter() - start
    if not swapped or after.gallery_version != "v2" or first.gallery_version != "v1":
        raise RuntimeError(f"matcher probe: the swap did not serve v2 ({first.gallery_version} -> {after.gallery_version})")
    return {
        "process_rss_before_mb": round(rss_start, 1),
        "startup_s": round(load_s, 1), "startup_download_s": round(loaded["download_s"], 1),
        "startup_to_first_identification_s": round(first_s, 1),
        "rss_after_startup_mb": round(loaded["rss_mb"], 1), "peak_rss_startup_mb": round(loaded["peak_rss_mb"], 1),
        "swap_reload_s": round(swap_load_s, 1), "swap_to_first_identification_s": round(swap_s, 1),
        "rss_after_swap_mb": round(rss_mb(), 1), "peak_rss_through_swap_mb": round(rss_mb("VmHWM"), 1),
        "top_candidate_same": first.candidates[0] == after.candidates[0],
    }


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench identification", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the 100k version (exact part at 10k, fewer queries)")
    parser.add_argument("--exact-size", type=int, help="exact-vs-numpy gallery size (default 50k; quick 10k)")
    parser.add_argument("--size", type=int, help="scale gallery size (default 1M; quick 100k)")
    parser.add_argument("--dim", type=int, default=DIM, help="embedding size (512: the trained models; 1280: the "
                        "general identifier)")
    parser.add_argument("--queries", type=int, help="batched queries (default 500; quick 200)")
    parser.add_argument("--single-queries", type=int, help="queries timed one at a time (default 50; quick 20)")
    parser.add_argument("--kinds", nargs="+", choices=("flat", "ivfflat", "hnsw", "ivfpq"),
                        default=["flat", "ivfflat", "hnsw"], help="indexes side by side (exact flat always)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="IndexConfig field for every index and the matcher's gallery (e.g. hnsw_ef_search=128); "
                        "default: the gallery's own IndexConfig, except IVF: nlist sqrt(N), nprobe 32 (see BENCH_IVF)")
    parser.add_argument("--no-matcher", action="store_true", help="skip the matcher start-up and hot-swap part")
    parser.add_argument("--skip-exact", action="store_true", help="skip the exact-vs-numpy part")
    parser.add_argument("--work", type=Path, help="directory for the saved galleries (default: the system's temp)")
    parser.add_argument("--data", choices=("species", "uniform"), default="species",
                        help="synthetic embedding structure (see clustered())")
    parser.add_argument("--latent", type=int, default=DIM,
                        help="effective rank of the synthetic embeddings (default 512: isotropic, the hardest case)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quick = {"exact_size": 10_000, "size": 100_000, "queries": 200, "single_queries": 20}
    full = {"exact_size": 50_000, "size": 1_000_000, "queries": 500, "single_queries": 50}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def index_overrides(pairs: list[str], size: int) -> dict:
    """BENCH_IVF for `size`, then the --set pairs."""
    fields = {name: type(value) for name, value in IndexConfig().__dict__.items()}
    overrides = {"ivf_nlist": int(round(np.sqrt(size))), "ivf_nprobe": BENCH_IVF["nprobe"]}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in fields:
            raise SystemExit(f"--set {pair}: IndexConfig has no field {name!r} ({', '.join(fields)})")
        overrides[name] = fields[name](value)
    return overrides


def main(argv: list[str]) -> dict:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse(argv)
    result = {} if args.skip_exact else {"exact": bench_exact(args.exact_size, args.queries, args.seed, args.data,
                                                               args.latent)}
    result["scale"] = bench_scale(args.size, args.dim, args.queries, args.single_queries, args.kinds, args.seed,
                                  args.data, args.latent, not args.no_matcher, args.work, index_overrides(args.set, args.size))
    return result


if __name__ == "__main__":
    import sys

    print(json.dumps(main(sys.argv[1:]), indent=2))
