"""Encounters in answers: the photos an app sent with one `encounter` id, identified together.

Each photo is identified on its own by the chain (its `identification`); a sighting's answer adds `encounter`:
its members and their candidates pooled by the identification core (services.core.identification.encounters: per
individual, the best score over the photos; `new_individual` at the median of the photos' thresholds). Pooled
on read, from the stored identifications, so it is current however the photos arrive.
"""

from __future__ import annotations

import statistics
from typing import Any

from services.chain.sighting_records import read_json_value
from services.core.identification import NEW_INDIVIDUAL
from services.core.identification.encounters import pool_predictions
from services.core.keys import encounter_key, identification_key

MAX_MEMBERS = 200  # photos pooled per encounter (a sighting event, not a catalogue)


def pooled_encounter(encounter: str, members: list[str], identifications: list[dict | None]) -> dict[str, Any]:
    """The `encounter` block of an answer from its members' stored identifications (None: not identified yet)."""
    identified = [i for i in identifications if i and i.get("candidates")]
    block: dict[str, Any] = {"id": encounter, "sightings": members, "identified": len(identified)}
    if not identified:
        return {**block, "candidates": [], "new_individual": None, "threshold": None}
    threshold = float(statistics.median(float(i.get("threshold") or 0.0) for i in identified))
    pooled = pool_predictions([[(c["individual_id"], float(c["score"])) for c in i["candidates"]]
                               for i in identified], threshold)
    return {**block, "threshold": round(threshold, 6), "new_individual": pooled[0][0] == NEW_INDIVIDUAL,
            "candidates": [{"individual_id": i, "score": round(float(s), 6)} for i, s in pooled]}


async def encounter_of(redis, owner: str, encounter: str) -> dict[str, Any] | None:
    """The pooled `encounter` block of one app's encounter, or None when it has no member (expired)."""
    members = sorted(m.decode() if isinstance(m, bytes) else str(m)
                     for m in await redis.smembers(encounter_key(owner, encounter)))[:MAX_MEMBERS]
    if not members:
        return None
    async with redis.pipeline(transaction=False) as pipe:
        for member in members:
            pipe.get(identification_key(member))
        raw = await pipe.execute()
    return pooled_encounter(encounter, members, [read_json_value(r) for r in raw])


def remember_member(pipe, owner: str, encounter: str, sighting_id: str, ttl_s: float) -> None:
    """Queue the membership of a new sighting (on the pipeline that creates it)."""
    pipe.sadd(encounter_key(owner, encounter), sighting_id)
    if ttl_s:
        pipe.expire(encounter_key(owner, encounter), int(ttl_s))


SCHEMA = {
    "type": "object", "required": ["id", "sightings", "identified", "candidates", "new_individual", "threshold"],
    "description": "the photos sent with the same `encounter` id by the same app, identified together: per "
                   "individual its best score over the photos, new_individual at the median of their thresholds",
    "properties": {
        "id": {"type": "string"},
        "sightings": {"type": "array", "items": {"type": "string"}, "description": "the encounter's sighting ids"},
        "identified": {"type": "integer", "description": "how many of them are identified (pooled)"},
        "threshold": {"type": ["number", "null"]},
        "new_individual": {"type": ["boolean", "null"], "description": "null until a photo is identified"},
        "candidates": {"type": "array", "items": {
            "type": "object", "required": ["individual_id", "score"],
            "properties": {"individual_id": {"type": "string"}, "score": {"type": "number"}}}},
    },
}
