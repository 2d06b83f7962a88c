"""`python -m bench identification --quick`: the scale table and the matcher's load / hot-swap probe, small.

A 20k gallery (the quick path with a smaller --size, to stay a short test): every index side by side against
exact search, and the matcher's real reload path in a fresh process serving the second version after a swap.
"""

from __future__ import annotations

from bench.bench_identification import main


def test_quick_scale_table_and_matcher_probe(tmp_path):
    result = main(["--quick", "--size", "20000", "--exact-size", "2000", "--queries", "100", "--single-queries", "5",
                   "--work", str(tmp_path)])

    assert result["exact"]["faiss_vs_numpy_top5_agreement"] == 1.0
    scale = result["scale"]
    assert scale["size"] == 20_000 and scale["dim"] == 512 and scale["individuals"] == 4_000
    rows = {row["kind"]: row for row in scale["indexes"]}
    assert list(rows) == ["flat", "ivfflat", "hnsw"]
    assert rows["flat"]["recall_at_5"] == 1.0
    assert rows["flat"]["individual_in_top5"] >= 0.95  # queries are new photos of known individuals
    for kind in ("ivfflat", "hnsw"):
        assert 0.9 <= rows[kind]["recall_at_5"] <= 1.0, rows[kind]
        assert rows[kind]["build_s"] >= 0 and rows[kind]["index_mb"] >= scale["embeddings_mb"] * 0.9
    assert rows["ivfflat"]["nlist"] == 141 and rows["ivfflat"]["nprobe"] == 32  # BENCH_IVF at 20k
    assert scale["served_index"] == "flat" and rows["flat"]["served_by_matcher"]  # 20k <= exact_max_size

    matcher = scale["matcher"]
    assert matcher["top_candidate_same"]  # both versions hold the same gallery
    # the served gallery is held in memory: at least its embeddings above the process's start
    assert matcher["rss_after_startup_mb"] - matcher["process_rss_before_mb"] >= scale["embeddings_mb"]
    assert matcher["peak_rss_through_swap_mb"] >= matcher["rss_after_startup_mb"]
    assert matcher["startup_to_first_identification_s"] >= matcher["startup_s"]
    assert matcher["swap_to_first_identification_s"] >= matcher["swap_reload_s"]
    assert not list(tmp_path.iterdir())  # the saved versions are removed
