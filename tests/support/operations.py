"""Helpers for the operations tests: synthetic galleries with known clusters, seeded sightings.

Embeddings are synthetic (512-d, one random centre per individual plus small noise), so "a new photo of the
confirmed individual" is a fresh noisy sample around that individual's centre, and new_individual is what the
default threshold (0.5) gives for a centre the gallery has never seen.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import redis

from services.core import keys
from services.core.identification import Tuning, build_gallery
from services.curation.operations.gallery_versions import GalleryStore
from services.curation.operations.publish import publish_gallery

DIM = 512
NOISE = 0.02
CLI_SETTINGS = ("run_dir", "gallery_prefix", "redis_url", "s3_endpoint", "kafka_bootstrap")


@contextmanager
def isolated_catalogue(base, monkeypatch, db: int, prefix: str, app_token: str,
                       researcher_token: str) -> Iterator[tuple]:
    """One test's own gallery prefix and (flushed) Redis database on the session's stack, exported as WHALEID_*
    for the CLI, with an app token and the researcher dr-fluke: yields (settings, GalleryStore, redis client)."""
    settings = base.with_overrides(gallery_prefix=f"{prefix}-{uuid.uuid4().hex[:6]}",
                                   redis_url=base.redis_url.rsplit("/", 1)[0] + f"/{db}",
                                   gateway_token=app_token, gateway_researcher_tokens=f"dr-fluke={researcher_token}")
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    for name in CLI_SETTINGS:
        monkeypatch.setenv(f"WHALEID_{name.upper()}", str(getattr(settings, name)))
    monkeypatch.setenv("WHALEID_PROFILE", "local")
    try:
        yield settings, GalleryStore.from_settings(settings), client
    finally:
        client.close()


class Clusters:
    """One random unit centre per individual; `sample(name)` is a new photo's embedding of that individual."""

    def __init__(self, seed: int = 7):
        self.rng = np.random.default_rng(seed)
        self.centres: dict[str, np.ndarray] = {}

    def centre(self, name: str) -> np.ndarray:
        if name not in self.centres:
            v = self.rng.normal(size=DIM).astype(np.float32)
            self.centres[name] = v / np.linalg.norm(v)
        return self.centres[name]

    def sample(self, name: str) -> np.ndarray:
        v = self.centre(name) + self.rng.normal(scale=NOISE, size=DIM).astype(np.float32)
        return (v / np.linalg.norm(v)).astype(np.float32)


def publish_initial_gallery(store: GalleryStore, clusters: Clusters, individuals: list[str], tmp: Path,
                            per_individual: int = 3) -> str:
    rows = [(ind, clusters.sample(ind)) for ind in individuals for _ in range(per_individual)]
    gallery = build_gallery(np.stack([v for _, v in rows]), [i for i, _ in rows], ["humpback_whale"] * len(rows),
                            [f"train-{n}.jpg" for n in range(len(rows))])
    tuning = Tuning(threshold=0.5).save(tmp / f"tuning-{uuid.uuid4().hex[:6]}.json")
    return publish_gallery(store, gallery, tuning, reason="initial gallery (test)")


def seed_sighting(client: redis.Redis, embedding: np.ndarray | None, candidates: list[tuple[str, float]] | None,
                  species_hint: str = "", gallery_version: str = "v-test") -> str:
    """Store what the gateway and the matcher would have stored for one processed sighting."""
    sighting_id = uuid.uuid4().hex
    client.hset(keys.sighting_key(sighting_id), mapping={
        "metadata": json.dumps({"observer": "test", "species_hint": species_hint}), "created_at": time.time()})
    if embedding is not None:
        client.set(keys.embedding_key(sighting_id), json.dumps({
            "sighting_id": sighting_id, "model_version": "toy", "embedding": [float(x) for x in embedding]}))
    if candidates is not None:
        client.set(keys.identification_key(sighting_id), json.dumps({
            "sighting_id": sighting_id, "candidates": [{"individual_id": i, "score": s} for i, s in candidates],
            "new_individual": bool(candidates) and candidates[0][0] == "new_individual",
            "gallery_version": gallery_version}))
    return sighting_id
