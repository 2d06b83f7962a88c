"""`whaleid chaos`'s topic observer across a restart of the real embedded broker (Tansu, memory only).

The observer used to read in a consumer group of its own: with kafka-python's default session timeout each join
took Tansu 23 s, and one happened at the start and after every restart, so `restart_kafka`'s `recover_s` measured
the observer's joins rather than the chain. It now assigns itself the partitions: no group exists on the broker,
and a record written to the topic created again after the restart is seen although its offset (0) is below the
position read in the old log.
"""

from __future__ import annotations

import time

import pytest

from services.core import topics
from services.devtools.chaos.observe import TopicObserver

DEADLINE_S = 90  # a liveness bound for the broker round trips, not a speed check


@pytest.fixture(scope="module")
def kafka_stack(tmp_path_factory):
    """A broker of its own: the test restarts it, which the session's stack must not see."""
    from services.core.settings import load_settings
    from services.devtools.stack import Stack

    root = tmp_path_factory.mktemp("observer-stack")
    settings = load_settings(profile="local", environ={}, run_dir=root / "run", model_repository=root)
    stack = Stack(settings, servers=("kafka",))
    stack.up(timeout=120)
    try:
        yield stack, load_settings(profile="local", environ={}, run_dir=root / "run", model_repository=root)
    finally:
        stack.down()


def _produce(bootstrap: str, key: bytes, value: bytes) -> None:
    """One record on partition 0 of `identifications`, acknowledged (the topic is created when missing)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(topics.IDENTIFICATIONS, key=key, value=value, partition=0).get(timeout=30)
    finally:
        producer.close(timeout=5)


def _wait_seen(observer: TopicObserver, sighting: str) -> bool:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if observer.deliveries(topics.IDENTIFICATIONS, [sighting]):
            return True
        time.sleep(0.2)
    return False


def _groups(bootstrap: str) -> list:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return admin.list_groups()
    finally:
        admin.close()


def test_the_observer_reads_the_recreated_topic_from_its_start_without_a_consumer_group(kafka_stack):
    stack, settings = kafka_stack
    bootstrap = settings.kafka_bootstrap
    for n in range(3):  # the old log: the observer's position on partition 0 ends at 3
        _produce(bootstrap, f"before-{n}".encode(), b'{"n": %d}' % n)
    observer = TopicObserver(bootstrap).start()
    try:
        assert _wait_seen(observer, "before-2")
        stack.stop_server("kafka")
        stack.start_server("kafka")
        _produce(bootstrap, b"after", b'{"n": "after"}')  # offset 0 of the new log, below the old position 3
        assert _wait_seen(observer, "after")
    finally:
        observer.stop()
    # Tansu lists a group once it committed offsets (a group reader commits on close at the latest): none here
    assert _groups(bootstrap) == []
