"""Reference photos of the candidates on the review page: which photos stand for each individual in the served
gallery, as short-lived presigned GETs.

The served version's entries.jsonl (one row per gallery embedding: image, individual_id, ...) is read once per
version (the pointer is re-read at most every `refresh_s`). A row whose image is `sighting/<id>` (what
`whaleid reindex` writes for a confirmed sighting) resolves to that sighting's upload in S3 while its
`sighting:<id>` hash exists; the newest such rows come first. Rows of other kinds have no photo in S3 to point
to: catalogue images name files of the training data (until the catalogue import stores them), and `mean/<id>`
rows are averages of many photos.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

from aiohttp import web

from services.chain.gateway.photos import photo_url
from services.core.identification.gallery import ENTRIES_FILE
from services.core.keys import sighting_key
from services.curation.operations.gallery_versions import GalleryStore, ModelStoreError
from services.curation.operations.known import CurrentGalleryIndividuals

SIGHTING_IMAGE_PREFIX = "sighting/"  # == services.curation.operations.reindex.IMAGE_PREFIX
PER_INDIVIDUAL = 2


class GalleryReferences:
    """Callable -> {individual_id: [sighting ids, newest first]} of the served gallery version."""

    def __init__(self, store: GalleryStore, refresh_s: float = 30.0):
        self.store, self.refresh_s = store, refresh_s
        self._lock = threading.Lock()
        self._version: str | None = None
        self._by_individual: dict[str, list[str]] = {}
        self._checked = -float("inf")

    def __call__(self) -> dict[str, list[str]]:
        with self._lock:
            if time.monotonic() - self._checked >= self.refresh_s:
                self._refresh()
            return self._by_individual

    def _refresh(self) -> None:
        self._checked = time.monotonic()
        pointer = self.store.pointer()
        if pointer is None or pointer.version == self._version:
            return
        try:
            lines = self.store._get_bytes(self.store._key(pointer.version, ENTRIES_FILE)).decode().splitlines()
        except FileNotFoundError:
            lines = []
        found: dict[str, list[str]] = {}
        for line in reversed(lines):  # re-indexing appends: newest rows last
            if not line.strip():
                continue
            row = json.loads(line)
            image = str(row.get("image", ""))
            if image.startswith(SIGHTING_IMAGE_PREFIX):
                found.setdefault(row["individual_id"], []).append(image[len(SIGHTING_IMAGE_PREFIX):])
        self._by_individual, self._version = found, pointer.version


KNOWN = web.AppKey("review_known_individuals", CurrentGalleryIndividuals)
REFERENCES = web.AppKey("review_references", GalleryReferences)


def attach_catalogue(app: web.Application, settings) -> None:
    """The served gallery's individuals (app[KNOWN]) and reference photos (app[REFERENCES]), made once per app."""
    if KNOWN not in app:
        store = GalleryStore.from_settings(settings)
        app[KNOWN] = CurrentGalleryIndividuals(store)
        app[REFERENCES] = GalleryReferences(store)


async def reference_photos(ctx, references: GalleryReferences, individual_ids: list[str],
                           per_individual: int = PER_INDIVIDUAL) -> dict[str, list[str]]:
    """{individual_id: [presigned photo URLs]} (at most `per_individual` each) for the ids that have any."""
    try:
        by_individual = await asyncio.to_thread(references)
    except ModelStoreError:
        return {}
    wanted = [(ind, sid) for ind in dict.fromkeys(individual_ids) for sid in by_individual.get(ind, [])[:per_individual]]
    if not wanted:
        return {}
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for _, sighting_id in wanted:
            pipe.hmget(sighting_key(sighting_id), "key", "bucket")
        records = await pipe.execute()
    urls: dict[str, list[str]] = {}
    for (individual_id, _), (key, bucket) in zip(wanted, records, strict=True):
        if key:
            urls.setdefault(individual_id, []).append(photo_url(ctx, key.decode(), (bucket or b"").decode()))
    return urls
