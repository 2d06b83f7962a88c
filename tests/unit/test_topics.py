"""Every topic record survives to_json/from_json (the wire format of non-Faust clients) unchanged."""

from __future__ import annotations

import json

import pytest

from services.core import topics

SAMPLES = [
    topics.SightingMetadata(
        observer="Ana",
        taken_at="2026-11-27T10:00:00Z",
        latitude=-33.9,
        longitude=18.4,
        species_hint="humpback_whale",
        crop_box=[1.0, 2.0, 30.5, 40.0],
    ),  # fmt: skip
    topics.SightingUploaded(
        sighting_id="s1",
        bucket="whaleid-sightings",
        key="uploads/a b+c.jpg",
        size=1234,
        event_name="ObjectCreated:Put",
        event_time="2026-11-27T10:00:01Z",
        metadata={"observer": "Ana", "crop_box": [1, 2, 3, 4]},
        uploaded_at=1.5,
    ),  # fmt: skip
    topics.SightingEmbedded(
        sighting_id="s1",
        embedding=[0.5, 0.75],  # float32-exact values: record version 2 carries float32
        model_version="b0-tiny-f0-e003",
        crop_box=None,
        crop_source="full",
        metadata=None,
        uploaded_at=1.5,
        embedded_at=2.5,
    ),  # fmt: skip
    topics.Identification(
        sighting_id="s1",
        candidates=[
            {"individual_id": "new_individual", "score": 0.5},
            {"individual_id": "whale-7", "score": 0.42},
        ],
        new_individual=True,
        model_version="m1",
        gallery_version="g3",
        uploaded_at=1.5,
        identified_at=3.0,
    ),  # fmt: skip
    topics.NewIndividual(
        sighting_id="s1",
        best_known_id="whale-7",
        best_known_score=0.42,
        gallery_version="g3",
        identified_at=3.0,
    ),  # fmt: skip
    topics.Confirmation(
        sighting_id="s1",
        action="confirm",
        individual_id="whale-7",
        researcher="ana",
        predicted=[{"individual_id": "whale-7", "score": 0.42}],
        confirmed_at=4.0,
    ),  # fmt: skip
    topics.DeadLetter(
        stage="bridge", reason="not an S3 event", original={"raw": "x"}, sighting_id="", failed_at=5.0
    ),
]


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_record_round_trips_through_json(record):
    data = record.to_json()
    assert isinstance(data, bytes)
    assert "__faust" not in json.loads(data)  # plain JSON for non-Faust clients
    back = type(record).from_json(data)
    assert type(back) is type(record)
    assert comparable(back) == comparable(record)
    assert comparable(type(record).from_json(data.decode())) == comparable(record)  # str input too


def comparable(record) -> dict:
    """asdict() with an embedding as a list: once read, SightingEmbedded keeps it as a numpy vector."""
    fields = record.asdict()
    if "embedding" in fields:
        fields["embedding"] = [float(v) for v in fields["embedding"]]
    return fields


def test_every_record_class_has_a_sample():
    classes = {
        obj for obj in vars(topics).values()
        if isinstance(obj, type) and issubclass(obj, topics._JsonRecord) and obj is not topics._JsonRecord
    }  # fmt: skip
    assert classes == {type(sample) for sample in SAMPLES}


def test_topic_names_are_distinct_and_listed():
    assert len(set(topics.ALL_TOPICS)) == len(topics.ALL_TOPICS) == 6
    assert topics.SIGHTINGS_UPLOADED in topics.ALL_TOPICS and topics.DEAD_LETTER == "sightings.dead-letter"
