"""Gallery: FAISS indexes, exact vs approximate agreement, save/load with manifest checks, bad input."""

import json

import numpy as np
import pytest

from services.core.errors import DataError
from services.core.identification import Gallery, IndexConfig, build_gallery
from support.identification import centres, noisy


def small_gallery(n=12, dim=8, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim))
    return build_gallery(emb, [f"ind{i // 2}" for i in range(n)], ["orca"] * n, [f"{i}.jpg" for i in range(n)],
                         metadata=[{"location": "Azores", "date": "2024-06-0%d" % (i % 9 + 1)} for i in range(n)],
                         model_ids=["m1"], **kwargs)


def test_embeddings_are_normalised_and_search_is_cosine():
    gallery = small_gallery()
    assert np.allclose(np.linalg.norm(gallery.embeddings, axis=1), 1.0, atol=1e-5)
    scores, rows = gallery.search(gallery.embeddings[3] * 7.0, k=3)  # scale does not matter
    assert rows[0, 0] == 3 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.diff(scores[0]) <= 1e-6)


def test_k_larger_than_the_gallery():
    gallery = small_gallery(n=3)
    scores, rows = gallery.search(gallery.embeddings[:1], k=10)
    assert rows.shape == (1, 3) and sorted(rows[0].tolist()) == [0, 1, 2]


def test_index_chosen_by_size():
    assert small_gallery(n=12).index_kind == "flat"
    config = IndexConfig(exact_max_size=10)
    assert small_gallery(n=12, index_config=config).index_kind == "ivfflat"
    assert small_gallery(n=12, index_config=IndexConfig(exact_max_size=10, approximate="flat")).index_kind == "flat"
    with pytest.raises(DataError, match="unknown"):
        IndexConfig(approximate="lsh")


def recall_at_5(exact_rows, approx_rows):
    return np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact_rows, approx_rows, strict=True)])


@pytest.mark.parametrize("config, minimum", [
    (IndexConfig(exact_max_size=1000, approximate="hnsw", hnsw_m=16, hnsw_ef_search=64), 0.9),
    (IndexConfig(exact_max_size=1000, approximate="ivfflat", ivf_nlist=32, ivf_nprobe=16), 0.9),
    (IndexConfig(exact_max_size=1000, approximate="ivfpq", ivf_nlist=32, ivf_pq_bytes=16, ivf_pq_bits=5,
                 ivf_nprobe=16), 0.5),
])
def test_exact_and_approximate_agree(config, minimum):
    rng = np.random.default_rng(1)
    c = centres(600, 64, rng)
    emb = noisy(c[rng.integers(0, 600, size=4000)], 1.0, rng)
    ids = [str(i) for i in range(4000)]
    exact = build_gallery(emb, ids, ids, ids)
    approx = build_gallery(emb, ids, ids, ids, index_config=config)
    assert exact.index_kind == "flat" and approx.index_kind == config.approximate
    queries = noisy(c[rng.integers(0, 600, size=200)], 1.0, rng)
    _, exact_rows = exact.search(queries, 5)
    _, approx_rows = approx.search(queries, 5)
    recall = recall_at_5(exact_rows, approx_rows)
    print(f"{config.approximate} recall@5 vs exact: {recall:.3f}")
    assert recall >= minimum


def test_save_load_round_trip(tmp_path):
    gallery = small_gallery()
    gallery.save(tmp_path / "g")
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert manifest["count"] == 12 and manifest["dimension"] == 8 and manifest["model_ids"] == ["m1"]
    assert manifest["format_version"] == 1 and set(manifest["files"]) == {"embeddings.npy", "entries.jsonl"}
    loaded = Gallery.load(tmp_path / "g")
    assert np.array_equal(loaded.embeddings, gallery.embeddings)
    assert loaded.individual_ids == gallery.individual_ids and loaded.images == gallery.images
    assert loaded.metadata[3] == {"location": "Azores", "date": "2024-06-04"}
    assert np.array_equal(loaded.search(gallery.embeddings, 4)[1], gallery.search(gallery.embeddings, 4)[1])


@pytest.mark.parametrize("kind", ["hnsw", "ivfflat"])
def test_save_load_keeps_the_approximate_index(tmp_path, kind):
    gallery = small_gallery(n=40, index_config=IndexConfig(exact_max_size=10, approximate=kind, ivf_nlist=4,
                                                           ivf_nprobe=4))
    gallery.save(tmp_path / "g")
    assert (tmp_path / "g" / "index.faiss").exists()
    loaded = Gallery.load(tmp_path / "g")
    assert loaded.index_kind == kind and loaded._index is not None
    assert np.array_equal(loaded.search(gallery.embeddings, 3)[1], gallery.search(gallery.embeddings, 3)[1])


def test_tampered_files_are_refused(tmp_path):
    small_gallery().save(tmp_path / "g")
    path = tmp_path / "g" / "embeddings.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="embeddings.npy does not match its manifest checksum"):
        Gallery.load(tmp_path / "g")


def test_edited_entries_and_bad_manifests_are_refused(tmp_path):
    directory = small_gallery().save(tmp_path / "g")
    entries = directory / "entries.jsonl"
    entries.write_text(entries.read_text().replace("ind0", "ind9", 1))
    with pytest.raises(DataError, match="entries.jsonl does not match"):
        Gallery.load(directory)
    directory = small_gallery().save(tmp_path / "h")
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(DataError, match="format version 99"):
        Gallery.load(directory)
    (directory / "manifest.json").unlink()
    with pytest.raises(DataError, match="no manifest.json"):
        Gallery.load(directory)


def test_add_returns_a_bigger_gallery():
    gallery = small_gallery()
    bigger = gallery.add(np.ones((2, 8)), ["new1", "new1"], ["orca", "orca"], ["a.jpg", "b.jpg"])
    assert len(bigger) == 14 and len(gallery) == 12
    assert bigger.search(np.ones((1, 8)), 1)[1][0, 0] in (12, 13)
    with pytest.raises(DataError, match="dimension"):
        gallery.add(np.ones((1, 4)), ["x"], ["orca"], ["c.jpg"])


@pytest.mark.parametrize("embeddings, ids, message", [
    (np.zeros((0, 8)), [], "empty"),
    (np.array([[1.0, np.nan], [1.0, 0.0]]), ["a", "b"], "NaN or infinite values in rows 0"),
    (np.array([[0.0, 0.0], [1.0, 0.0]]), ["a", "b"], "zero vectors in rows 0"),
    (np.ones((3, 4)), ["a", "b"], "3 embeddings but 2 individual_ids"),
    (np.ones(4), ["a"], "2-D"),
    (np.ones((2, 4)), ["a", "new_individual"], "not an individual"),
    (np.ones((2, 4)), ["a", " "], "empty individual_id"),
])
def test_bad_gallery_input(embeddings, ids, message):
    n = len(embeddings) if np.ndim(embeddings) == 2 else 1
    with pytest.raises(DataError, match=message):
        build_gallery(embeddings, ids, ["s"] * n, [str(i) for i in range(n)])


def test_bad_queries():
    gallery = small_gallery()
    with pytest.raises(DataError, match="dimension 5 does not match the expected 8"):
        gallery.search(np.ones((2, 5)), 3)
    with pytest.raises(DataError, match="rows 1"):
        gallery.search(np.array([np.ones(8), np.full(8, np.inf)]), 3)
    with pytest.raises(DataError, match="k must be"):
        gallery.search(np.ones((1, 8)), 0)
