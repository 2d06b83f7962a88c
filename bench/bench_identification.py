"""Identification search speed and approximate-index quality, measured side by side in one run.

1. Exact search at `--exact-size` (default 50k) x 512: FAISS IndexFlatIP (batched, and one query at a time)
   against numpy brute force (matrix product + top-5), per-query milliseconds and the ratio.
2. Approximate search at `--size` (default 1M) x 512 with the gallery's own IndexConfig for large galleries
   (HNSW by default, `--approximate ivfpq` for IVF-PQ): build time, batched per-query latency, and recall@5
   against exact search on `--recall-queries` queries.
Embeddings are clustered like real ones: several noisy photos per individual, queries are new photos.
Targets: <= 1 ms per query exact at 50k (batched); recall@5 >= 0.98 at 1M.
"""

from __future__ import annotations

import argparse
import logging
import time

import faiss
import numpy as np

from services.identification.gallery import IndexConfig, build_index

log = logging.getLogger("bench.identification")
DIM = 512
K = 5


def clustered(size: int, queries: int, seed: int, structure: str = "species", latent: int = DIM,
              photos_per_individual: int = 5, species: int = 30, individual_spread: float = 1.2,
              photo_noise: float = 1.0):
    """(gallery (size, DIM), queries (queries, DIM)) unit vectors; queries are new photos of gallery animals.

    structure "species": individuals scattered around `species` centres (cosine ~0.64 to their species centre,
    ~0.4 between animals of a species), as embeddings of a species-aware model; "uniform": individuals uniformly
    random on the sphere (no structure above the individual). Photos have cosine ~0.7 to their individual (~0.5
    between two photos of one animal). `latent` < DIM: all of it happens in a random `latent`-dimensional subspace
    (trained embeddings have a low effective rank); `latent` = DIM: isotropic 512-d noise, the hardest case.
    """
    rng = np.random.default_rng(seed)
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
    if dim < DIM:  # orthonormal columns: inner products are those of the latent space
        basis = np.linalg.qr(rng.standard_normal((DIM, dim)))[0].astype(np.float32).T
    gallery = np.empty((size, DIM), dtype=np.float32)
    chunk = 100_000
    for start in range(0, size, chunk):
        rows = np.arange(start, min(start + chunk, size)) % individuals
        part = _unit(centres[rows] + photo_noise / np.sqrt(dim) * rng.standard_normal((len(rows), dim),
                                                                                      dtype=np.float32))
        gallery[start:start + len(rows)] = part if basis is None else part @ basis
    picked = rng.integers(0, individuals, size=queries)
    query = _unit(centres[picked] + photo_noise / np.sqrt(dim) * rng.standard_normal((queries, dim), dtype=np.float32))
    return gallery, np.ascontiguousarray(query if basis is None else query @ basis)


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


def per_query_ms(func, queries: np.ndarray, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        func(queries)
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best / len(queries)


def recall_at_k(exact: np.ndarray, approximate: np.ndarray) -> float:
    return float(np.mean([len(set(e) & set(a)) / len(e) for e, a in zip(exact, approximate, strict=True)]))


def bench_exact(size: int, queries: int, seed: int, structure: str, latent: int) -> dict:
    log.info("exact: %d x %d gallery, %d queries", size, DIM, queries)
    gallery, query = clustered(size, queries, seed, structure, latent)
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


def bench_approximate(size: int, queries: int, recall_queries: int, seed: int, config: IndexConfig,
                      search_effort: list[int], structure: str, latent: int) -> dict:
    """Build once, then per search effort (HNSW efSearch or IVF nprobe): batched latency and recall@5."""
    log.info("approximate (%s): generating %d x %d", config.approximate, size, DIM)
    gallery, query = clustered(size, queries, seed + 1, structure, latent)
    config = IndexConfig(**{**config.__dict__, "exact_max_size": min(config.exact_max_size, size - 1)})
    start = time.perf_counter()
    index = build_index(gallery, config)
    build_s = time.perf_counter() - start
    sample = query[:recall_queries]
    exact_index = faiss.IndexFlatIP(DIM)
    exact_index.add(gallery)
    start = time.perf_counter()
    exact_rows = exact_index.search(sample, K)[1]
    exact_ms = 1000.0 * (time.perf_counter() - start) / len(sample)
    del exact_index
    default_effort = config.hnsw_ef_search if config.approximate == "hnsw" else config.ivf_nprobe
    points = []
    for effort in sorted(set(search_effort) | {default_effort}):
        _set_effort(index, config.approximate, effort)
        ms = per_query_ms(lambda q: index.search(q, K), query, repeats=2)
        recall = recall_at_k(exact_rows, index.search(sample, K)[1])
        log.info("%s effort %d: %.3f ms/query, recall@5 %.4f", config.approximate, effort, ms, recall)
        points.append({"effort": effort, "ms_per_query": round(ms, 4), "recall_at_5": round(recall, 4),
                       "exact_over_approximate": round(exact_ms / ms, 1)})
    default = next(p for p in points if p["effort"] == default_effort)
    return {
        "size": size, "data": structure, "latent_dim": latent, "kind": config.approximate, "config": config.__dict__, "threads": faiss.omp_get_max_threads(),
        "build_s": round(build_s, 1), "exact_batched_ms_per_query": round(exact_ms, 3),
        "effort_name": "efSearch" if config.approximate == "hnsw" else "nprobe", "sweep": points,
        "default_effort": default_effort, "approximate_batched_ms_per_query": default["ms_per_query"],
        "recall_at_5": default["recall_at_5"], "recall_queries": len(sample),
        "target_recall_at_5": 0.98, "meets_target": default["recall_at_5"] >= 0.98,
    }


def _set_effort(index, kind: str, effort: int) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = effort
    else:
        index.nprobe = effort


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench identification", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exact-size", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=1_000_000, help="approximate-index gallery size")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--recall-queries", type=int, default=500)
    parser.add_argument("--approximate", choices=("hnsw", "ivfflat", "ivfpq"), default=IndexConfig().approximate)
    parser.add_argument("--hnsw-m", type=int, default=IndexConfig().hnsw_m)
    parser.add_argument("--ef-construction", type=int, default=IndexConfig().hnsw_ef_construction)
    parser.add_argument("--ef-search", type=int, default=IndexConfig().hnsw_ef_search)
    parser.add_argument("--nlist", type=int, default=IndexConfig().ivf_nlist, help="IVF lists (0: 4 sqrt(N))")
    parser.add_argument("--nprobe", type=int, default=IndexConfig().ivf_nprobe)
    parser.add_argument("--effort", type=int, nargs="*", default=[],
                        help="also measure these efSearch (HNSW) / nprobe (IVF) values on the same index")
    parser.add_argument("--skip-exact", action="store_true", help="only the approximate-index part")
    parser.add_argument("--data", choices=("species", "uniform"), default="species",
                        help="synthetic embedding structure (see clustered())")
    parser.add_argument("--latent", type=int, default=DIM,
                        help="effective rank of the synthetic embeddings (default 512: isotropic, the hardest case)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str]) -> dict:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse(argv)
    config = IndexConfig(approximate=args.approximate, hnsw_m=args.hnsw_m, hnsw_ef_construction=args.ef_construction,
                         hnsw_ef_search=args.ef_search, ivf_nlist=args.nlist, ivf_nprobe=args.nprobe)
    result = {} if args.skip_exact else {"exact": bench_exact(args.exact_size, args.queries, args.seed, args.data, args.latent)}
    result["approximate"] = bench_approximate(args.size, args.queries, args.recall_queries, args.seed, config,
                                              args.effort, args.data, args.latent)
    return result


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(main(sys.argv[1:]), indent=2))
