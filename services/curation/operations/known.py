"""The individuals of the served gallery version, refreshed from the model store's pointer.

Long-running processes that hold one (the gateway's confirmations routes) also export the re-index time of the
pointer as REINDEX_LAST_SUCCESS, so the "index older than two nights" alert works although `whaleid reindex`
itself is a short-lived CronJob that Prometheus never scrapes.
"""

from __future__ import annotations

import threading
import time

from services.core.metrics import REINDEX_LAST_SUCCESS
from services.curation.operations.confirmations import KnownIndividuals
from services.curation.operations.gallery_versions import GalleryStore, ModelStoreError


class CurrentGalleryIndividuals:
    """Callable -> KnownIndividuals of the current version; re-reads the pointer at most every `refresh_s`."""

    def __init__(self, store: GalleryStore, refresh_s: float = 10.0):
        self.store = store
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._known: KnownIndividuals | None = None
        self._checked = 0.0

    def __call__(self) -> KnownIndividuals:
        with self._lock:
            if self._known is None or time.monotonic() - self._checked >= self.refresh_s:
                self._refresh()
            return self._known

    def _refresh(self) -> None:
        pointer = self.store.pointer()
        if pointer is None:
            raise ModelStoreError("no gallery version is published yet (no `current` pointer in the model store)")
        if pointer.reindexed_at:
            REINDEX_LAST_SUCCESS.set(pointer.reindexed_at)
        if self._known is None or self._known.version != pointer.version:
            self._known = KnownIndividuals(pointer.version, frozenset(self.store.individuals(pointer.version)))
        self._checked = time.monotonic()
