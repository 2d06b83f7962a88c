"""`Reconciler(settings).run_once()`: one pass over Redis, S3 and the topics; the counts of what it found.

A pass runs three steps (services/chain/reconciler/uploads.py, announcements.py, topic_audit.py) under the
`reconciler:lease`, so two reconcilers (or a test's `run_once` next to the service) never overlap. The lease is
short (`LEASE_TTL_S`) and renewed by a heartbeat thread while the pass runs, so a reconciler killed mid-pass
locks its successor out for seconds, not minutes (a SIGKILL left a 120 s lease: the next scenarios waited for
their re-drives until it expired). A step that
fails (a server down) is reported and the pass goes on; its Kafka clients are then made again at the next pass
(a broker restart leaves kafka-python clients unusable).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from botocore.config import Config

from services.chain import markers
from services.chain.failures import TransientFailure
from services.chain.reconciler import kafka_io
from services.chain.reconciler.announcements import Announcements
from services.chain.reconciler.findings import FOUND_KINDS, OPEN_STATES, Findings
from services.chain.reconciler.state import Lease
from services.chain.reconciler.topic_audit import CHECKED, UNVERIFIED, TopicAudit
from services.chain.reconciler.uploads import STAGE, StaleUploads
from services.core import topics
from services.core.metrics import (
    RECONCILER_FOUND,
    RECONCILER_LAST_PASS,
    RECONCILER_SIGHTINGS,
    STEP_LATENCY,
    timed,
)
from services.core.settings import Settings

log = logging.getLogger(__name__)
LEASE_TTL_S = 15.0  # the pass lease's lifetime; renewed every third of it while a pass runs

WORKER_GROUP = "whaleid-worker"  # the Faust apps' ids (services.chain.faust_app.make_app): their consumer groups
MATCHER_GROUP = "whaleid-matcher"


@dataclass(frozen=True)
class ReconcilerTopics:
    """The topics a pass reads and writes (tests point them elsewhere)."""

    uploaded: str = topics.SIGHTINGS_UPLOADED
    identifications: str = topics.IDENTIFICATIONS
    new_individuals: str = topics.NEW_INDIVIDUALS
    dead_letter: str = topics.DEAD_LETTER


class _Heartbeat:
    """Renews the lease every `every_s` while a pass runs (a thread: a step can block for long on S3 or Kafka)."""

    def __init__(self, lease: Lease, every_s: float):
        self.lease = lease
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler-lease", daemon=True)

    def start(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                if not self.lease.refresh():
                    log.warning("reconciler: the lease was lost during a pass")
            except Exception as exc:  # noqa: BLE001 - Redis away: the pass's own steps notice it
                log.debug("reconciler: lease heartbeat: %s", exc)


class LeaseHeld(TransientFailure):
    """Another reconciler pass holds `reconciler:lease`."""


def s3_client(settings: Settings):
    """S3 with short timeouts: a HEAD must not hold a pass for a minute when S3 is away."""
    from services.curation.operations.gallery_versions import s3_client as store_client

    return store_client(settings, Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=3,
                                         read_timeout=10))


class Reconciler:
    """`redis_client` / `s3`: made from the settings when not given. `backlog`: a callable saying why the chain
    is behind (None when it caught up); default: the committed offsets of whaleid-worker on the uploaded topic and
    of whaleid-matcher on sightings.embedded against their end offsets."""

    def __init__(self, settings: Settings, redis_client=None, s3=None, topic_names: ReconcilerTopics | None = None,
                 backlog: Callable[[], str | None] | None = None, clock: Callable[[], float] = time.time):
        self.settings = settings
        self._own_redis = redis_client is None
        self.redis = redis_client if redis_client is not None else markers.redis_client(settings.redis_url)
        self.s3 = s3 if s3 is not None else s3_client(settings)
        self.topics = topic_names or ReconcilerTopics()
        self.clock = clock
        self._backlog = backlog
        self._producer = None
        self._consumer = None
        self._lag: kafka_io.GroupLag | None = None
        self.lease = Lease(self.redis, LEASE_TTL_S)
        self.uploads = StaleUploads(settings, self.redis, self.s3, self._produce, self.topics, clock)
        self.announcements = Announcements(settings, self.redis, self._produce, self.topics, clock)
        self.last_found: dict[str, list[str]] = {}  # kind -> sighting ids, of the last pass
        for kind in FOUND_KINDS:  # every series exists from the start: increase() sees the first find too
            RECONCILER_FOUND.labels(kind=kind)
        self.last_findings: Findings | None = None
        self.last_unfinished: dict[str, str] = {}  # topic -> UNREAD / UNVERIFIED, of the last pass
        # topic -> the passes in a row that ended UNVERIFIED on it (this process's memory: a restart only makes
        # the audit wait longer before it reads the topic again from the beginning)
        self._unverified_passes: dict[str, int] = {}

    # ------------------------------------------------------------------ one pass
    def run_once(self, wait_s: float = 60.0) -> dict[str, int]:
        """One pass; {kind: count} for every kind of services.chain.reconciler.findings.KINDS. Waits up to `wait_s`
        for a pass of another reconciler to end (LeaseHeld after that)."""
        deadline = time.monotonic() + wait_s
        while not self.lease.acquire():
            if time.monotonic() >= deadline:
                raise LeaseHeld("another reconciler pass is running (reconciler:lease)")
            time.sleep(0.1)
        heartbeat = _Heartbeat(self.lease, LEASE_TTL_S / 3).start()
        try:
            findings = self._pass()
        finally:
            heartbeat.stop()
            self.lease.release()
        return dict(findings.counts)

    def _pass(self) -> Findings:
        findings = Findings(self._behind)
        self.last_unfinished = {}
        steps = (("uploads", self.uploads.run), ("announce", self.announcements.run), ("topics", self._topics))
        with timed(STEP_LATENCY, stage=STAGE, step="pass"):
            for name, step in steps:
                try:
                    with timed(STEP_LATENCY, stage=STAGE, step=name):
                        step(findings)
                except Exception as exc:  # noqa: BLE001 - the other steps still run; this one runs next pass
                    log.warning("reconciler: %s step failed: %s: %s", name, type(exc).__name__, exc)
                    findings.add("errors")
                    self._reset_kafka()
                self.lease.refresh()
        for kind in FOUND_KINDS:
            if findings.counts[kind]:
                RECONCILER_FOUND.labels(kind=kind).inc(findings.counts[kind])
        for state in OPEN_STATES:
            RECONCILER_SIGHTINGS.labels(state=state).set(findings.counts[state])
        RECONCILER_LAST_PASS.set(time.time())
        self.last_found = {kind: ids for kind, ids in findings.ids.items() if ids}
        self.last_findings = findings
        return findings

    def _topics(self, findings: Findings) -> None:
        for topic, only_new in ((self.topics.identifications, False), (self.topics.new_individuals, True)):
            reader = kafka_io.PartitionReader(self._reader(), topic)
            outcome = TopicAudit(self.settings, self.redis, reader, self._produce, topic, only_new,
                                 unverified_passes=self._unverified_passes.get(topic, 0)).run(findings)
            self._unverified_passes[topic] = self._unverified_passes.get(topic, 0) + 1 if outcome == UNVERIFIED else 0
            if outcome != CHECKED:
                self.last_unfinished[topic] = outcome
                self._replace_reader(topic)

    def _replace_reader(self, topic: str) -> None:
        """After a topic could not be read to its end (or its stored position not verified): the next read uses
        a new consumer, with fresh metadata, no fetch session, no cached leader epochs and no fetcher state (a
        safety net: the stall this was added for came from partitions kafka-python never fetched again after
        a pause, which `PartitionReader.first_records` no longer does; docs/chaos.md, restart_kafka)."""
        log.warning("reconciler: %s not read to its end: the next read uses a new Kafka consumer", topic)
        self._drop_reader()

    def _behind(self) -> str | None:
        if self._backlog is not None:
            return self._backlog()
        try:
            if self._lag is None:
                self._lag = kafka_io.GroupLag(self.settings, self._reader(), [
                    (WORKER_GROUP, self.topics.uploaded), (MATCHER_GROUP, topics.SIGHTINGS_EMBEDDED)])
            return self._lag.behind()
        except Exception as exc:  # noqa: BLE001 - unknown lag: act as if behind (never give up on a guess)
            self._reset_kafka()
            return f"the consumer groups' offsets cannot be read ({type(exc).__name__}: {exc})"

    # ------------------------------------------------------------------ Kafka clients
    def _produce(self, records: list[tuple[str, str, bytes]]) -> list:
        if self._producer is None:
            self._producer = kafka_io.kafka_producer(self.settings)
        return kafka_io.produce_all(self._producer, records)

    def _reader(self):
        if self._consumer is None:
            self._consumer = kafka_io.kafka_consumer(self.settings)
        return self._consumer

    def _drop_reader(self) -> None:
        """Drop the consumer and its group-lag reader (made again when next needed)."""
        if self._lag is not None:
            self._lag.close()
        _close_quietly(self._consumer)
        self._consumer = self._lag = None

    def _reset_kafka(self) -> None:
        """Drop the Kafka clients (made again when next needed)."""
        self._drop_reader()
        _close_quietly(self._producer, timeout=5)
        self._producer = None

    def close(self) -> None:
        self._reset_kafka()
        if self._own_redis:
            self.redis.close()

    def __enter__(self) -> "Reconciler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close_quietly(client, **kwargs) -> None:
    """Close a Kafka client of a broker that may have gone away."""
    if client is not None:
        try:
            client.close(**kwargs)
        except Exception:  # noqa: BLE001, S110 - a client of a broker that went away
            pass
