"""Step 2 of a pass: identifications the matcher stored but never announced (it stopped between its Redis result
and its stream entry). Each one older than `reconciler_announce_grace_s` is announced exactly as the matcher
does it: produced to `identifications` (and `new-individuals` when new_individual), keyed by sighting id, with the
stored result as content, acknowledged; then `results.announce` (marker + stream entry, once).

The candidates come from the index `identifications:unannounced` (services.chain.results: added with each stored
result, removed by its announcement), read in chunks of SCAN_COUNT up to the grace: a pass costs what is still
unannounced, never a scan of every key. Entries whose result expired, or that were announced meanwhile, are
dropped from the index here.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from services.chain import results
from services.chain.reconciler.findings import Findings, read_index
from services.core import topics
from services.core.keys import UNANNOUNCED_INDEX, announced_key, identification_key
from services.core.metrics import IDENTIFICATIONS
from services.core.settings import Settings

log = logging.getLogger(__name__)

SCAN_COUNT = 500


def topic_records(identification: topics.Identification, topic_names) -> list[tuple[str, str, bytes]]:
    """The records the matcher produces for an identification: (topic, key, value)."""
    records = [(topic_names.identifications, identification.sighting_id, identification.to_json())]
    if identification.new_individual:
        records.append((topic_names.new_individuals, identification.sighting_id,
                        results.new_individual_record(identification).to_json()))
    return records


class Announcements:
    def __init__(self, settings: Settings, redis, produce: Callable[[list], list], topic_names,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.redis = redis
        self.produce = produce
        self.topics = topic_names
        self.clock = clock

    def run(self, findings: Findings) -> None:
        until = self.clock() - self.settings.reconciler_announce_grace_s
        read_index(self.redis, UNANNOUNCED_INDEX, lambda ids: self._batch(ids, findings), SCAN_COUNT, until)

    def _batch(self, ids: list[str], findings: Findings) -> int:
        """Announce what is due among `ids`; returns how many left the index (so the next chunk's offset holds)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for sighting_id in ids:
                pipe.exists(announced_key(sighting_id))
            announced = pipe.execute()
        waiting = [s for s, done in zip(ids, announced, strict=True) if not done]
        gone = [s for s, done in zip(ids, announced, strict=True) if done]
        now = self.clock()
        due = []
        stored = self.redis.mget([identification_key(s) for s in waiting]) if waiting else []
        for sighting_id, raw in zip(waiting, stored, strict=True):
            if raw is None:  # the result expired: nothing left to announce
                gone.append(sighting_id)
                continue
            try:
                identification = topics.Identification.from_json(raw)
            except Exception as exc:  # noqa: BLE001 - not ours to repair; reported
                log.warning("reconciler: %s is unreadable: %s", identification_key(sighting_id), exc)
                findings.add("errors", sighting_id)
                continue
            if now - identification.identified_at > self.settings.reconciler_announce_grace_s:
                due.append(identification)
        if gone:
            self.redis.zrem(UNANNOUNCED_INDEX, *gone)
        if not due:
            return len(gone)
        self.produce([record for identification in due for record in topic_records(identification, self.topics)])
        for identification in due:
            if results.announce(self.redis, identification, self.settings.redis_marker_ttl_s,
                                self.settings.redis_stream_maxlen):
                findings.add("unannounced", identification.sighting_id)
                IDENTIFICATIONS.labels(result="new_individual" if identification.new_individual else "known").inc()
                log.info("reconciler: identification of %s announced (the matcher had stored it only)",
                         identification.sighting_id)
        return len(gone) + len(due)  # announce() took each due one out of the index
