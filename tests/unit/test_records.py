"""The versioned SightingEmbedded record (services/core/topics.py, docs/interfaces.md "Records on the topics"): version 2
carries Triton's float32 embedding as base64 bytes; version 1 (a JSON float list) still parses; unknown versions
and malformed embeddings are refused with their reason; scores do not move."""

from __future__ import annotations

import json

import faust
import numpy as np
import pytest

from services.core import topics
from services.core.errors import DataError
from services.core.identification import Identifier, Tuning, build_gallery
from services.curation.operations.records import decode_embedding


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def triton_like(count: int, seed: int = 0) -> np.ndarray:
    """float32 unit rows, as the ensemble returns them."""
    return unit(np.random.default_rng(seed).normal(size=(count, 512)))


def v1_json(sighting_id: str, vector) -> bytes:
    """A record as the worker wrote it before #23: the float32 values as a JSON list of float64 reprs."""
    return json.dumps({"sighting_id": sighting_id, "embedding": [float(v) for v in vector.tolist()],
                       "model_version": "m:1", "crop_box": None, "crop_source": "full", "metadata": None,
                       "uploaded_at": 1.0, "embedded_at": 2.0, "species_scores": None}).encode()


def test_version_2_round_trip_is_bit_exact_and_three_times_smaller():
    vector = triton_like(1)[0]
    record = topics.SightingEmbedded(sighting_id="s1", embedding=vector, model_version="m:1", crop_box=[1, 2, 3, 4],
                                     crop_source="uploader", metadata={"observer": "x"}, uploaded_at=1.5,
                                     species_scores={"beluga": 0.75})
    wire = record.to_json()
    data = json.loads(wire)
    assert data["record_version"] == topics.EMBEDDED_RECORD_VERSION == 2
    assert "embedding" not in data and len(data["embedding_f32"]) == 2732
    back = topics.SightingEmbedded.from_json(wire)
    assert np.array_equal(np.asarray(back.embedding, dtype=np.float32), vector)
    assert (back.sighting_id, back.crop_box, back.crop_source, back.metadata, back.species_scores) == (
        "s1", [1, 2, 3, 4], "uploader", {"observer": "x"}, {"beluga": 0.75})
    assert back.to_json() == wire
    assert len(wire) * 3 < len(v1_json("s1", vector))


def test_version_1_records_still_parse_to_the_same_values():
    vector = triton_like(1, seed=1)[0]
    old = topics.SightingEmbedded.from_json(v1_json("s1", vector))
    assert old.sighting_id == "s1" and old.model_version == "m:1"
    assert np.array_equal(np.asarray(old.embedding, dtype=np.float32), vector)  # float32 -> float64 repr -> float32


def test_scores_from_version_2_equal_those_from_version_1():
    """MAP@5 cannot move: the cosine scores of the same sightings against one gallery, read from version 1 (the
    float list) and version 2 (float32 bytes) records, differ by less than 1e-6 (measured: not at all)."""
    gallery = triton_like(200, seed=2)
    identifier = Identifier(build_gallery(gallery, [f"w{i // 4}" for i in range(200)], ["beluga"] * 200,
                                          [f"{i}.jpg" for i in range(200)]), Tuning(threshold=0.5))
    queries = unit(gallery[::10] + np.random.default_rng(3).normal(size=(20, 512)).astype(np.float32) * 0.05)
    v1 = np.asarray([topics.SightingEmbedded.from_json(v1_json(f"s{i}", q)).embedding for i, q in enumerate(queries)],
                    dtype=np.float32)
    v2 = np.asarray([topics.SightingEmbedded.from_json(topics.SightingEmbedded(
        sighting_id=f"s{i}", embedding=q, model_version="m:1").to_json()).embedding for i, q in enumerate(queries)],
        dtype=np.float32)
    scores_1 = [[s for _, s in p] for p in identifier.identify_detailed(v1).predictions]
    scores_2 = [[s for _, s in p] for p in identifier.identify_detailed(v2).predictions]
    ids_1 = [[i for i, _ in p] for p in identifier.identify_detailed(v1).predictions]
    ids_2 = [[i for i, _ in p] for p in identifier.identify_detailed(v2).predictions]
    assert ids_1 == ids_2
    assert np.max(np.abs(np.asarray(scores_1) - np.asarray(scores_2))) < 1e-6


@pytest.mark.parametrize("change, reason", [
    ({"record_version": 3}, "unsupported_record_version"),
    ({"record_version": "2"}, "unsupported_record_version"),
    ({"embedding_f32": "not base64!"}, "malformed_event"),
    ({"embedding_f32": "AAAA"}, "malformed_event"),  # 3 bytes: not whole float32 values
    ({"embedding_f32": None}, "malformed_event"),
])
def test_unknown_versions_and_malformed_embeddings_are_refused_with_their_reason(change, reason):
    data = {**topics.SightingEmbedded(sighting_id="s", embedding=[1.0, 0.0], model_version="m").to_data(), **change}
    with pytest.raises(topics.RecordError) as caught:
        topics.SightingEmbedded.from_data(data)
    assert caught.value.reason == reason


def test_a_reader_older_than_version_2_fails_clearly_instead_of_misranking():
    """The pre-#23 record class (embedding: a required float list) cannot build a version 2 record: the field it
    needs is missing, so an old matcher dead-letters it (malformed_event) and ranks nothing."""

    class OldSightingEmbedded(faust.Record, serializer="json", include_metadata=False):
        sighting_id: str
        embedding: list[float]
        model_version: str

    wire = topics.SightingEmbedded(sighting_id="s", embedding=[0.6, 0.8], model_version="m").to_json()
    with pytest.raises(TypeError, match="embedding"):
        OldSightingEmbedded.from_data(json.loads(wire))


def test_the_stored_embedding_is_read_back_in_either_version():
    vector = triton_like(1, seed=4)[0]
    v2 = topics.SightingEmbedded(sighting_id="s", embedding=vector, model_version="m").to_json()
    assert np.array_equal(decode_embedding(v2, "s"), vector)
    assert np.array_equal(decode_embedding(v1_json("s", vector), "s"), vector)
    with pytest.raises(DataError, match="record_version"):
        decode_embedding(json.dumps({"record_version": 9, "embedding_f32": ""}).encode(), "s")
