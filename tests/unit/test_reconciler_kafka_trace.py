"""The reconciler's Kafka trace: kafka-python's DEBUG records reach `reconciler-kafka.log` only for a pass that
could not audit a topic, never the console, and the file stays bounded."""

from __future__ import annotations

import io
import logging

import pytest

from services.chain.reconciler import kafka_trace
from services.chain.reconciler.kafka_trace import KafkaTrace, trace_path


@pytest.fixture
def console():
    """A console handler on the root logger at INFO, as `whaleid serve` sets it up."""
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def trace(tmp_path, console):
    trace = KafkaTrace(trace_path(tmp_path)).install()
    yield trace
    trace.close()


def test_a_pass_that_audited_every_topic_writes_nothing(trace, console):
    trace.begin()
    logging.getLogger("kafka.consumer.fetcher").debug("fetch offset 5")
    trace.end({})
    assert not trace.path.exists()
    assert "fetch offset" not in console.getvalue()


def test_a_pass_that_left_a_topic_unverified_writes_its_kafka_records_and_the_console_keeps_info(trace, console):
    trace.begin()
    logging.getLogger("kafka.consumer.fetcher").debug("before this pass")
    trace.begin()
    logging.getLogger("kafka.consumer.fetcher").debug("fetch offset %d", 5)
    logging.getLogger("kafka.cluster").info("Updated metadata")
    logging.getLogger("kafka.net.manager").debug("connected")
    logging.getLogger("kafka.net.connection").debug("Response 7: FetchResponse(...)")  # not lowered to DEBUG
    logging.getLogger("kafka.net.connection").warning("connection refused")
    logging.getLogger("services.other").debug("not kafka")
    trace.end({"identifications": "unverified"})
    written = trace.path.read_text()
    assert "identifications unverified" in written
    assert "fetch offset 5" in written and "Updated metadata" in written and "connected" in written
    assert "connection refused" in written  # every kafka-python logger's records at its usual level
    assert "before this pass" not in written and "not kafka" not in written and "FetchResponse" not in written
    shown = console.getvalue()
    assert "Updated metadata" in shown  # kafka-python at INFO reaches the console as before
    assert "fetch offset" not in shown and "connected" not in shown
    assert "reconciler-kafka.log" in shown  # where to look


def test_a_pass_keeps_its_last_lines_and_the_file_rotates_within_its_bound(tmp_path, console, monkeypatch):
    monkeypatch.setattr(kafka_trace, "MAX_LINES", 50)
    monkeypatch.setattr(kafka_trace, "MAX_BYTES", 20_000)
    trace = KafkaTrace(trace_path(tmp_path)).install()
    try:
        fetcher = logging.getLogger("kafka.consumer.fetcher")
        for n in range(40):
            trace.begin()
            for line in range(60):
                fetcher.debug("pass %d line %d %s", n, line, "x" * 100)
            trace.end({"identifications": "unread"})
    finally:
        trace.close()
    files = sorted(trace.path.parent.glob(trace.path.name + "*"))
    assert len(files) == 1 + kafka_trace.BACKUPS  # the oldest passes rotated out
    assert all(f.stat().st_size <= 20_000 for f in files)
    kept = "".join(f.read_text() for f in reversed(files))  # oldest first
    last_pass = kept[kept.rindex("-----"):]
    assert "(the first 10 not kept)" in last_pass.splitlines()[0]
    assert [line.split()[7] for line in last_pass.splitlines()[1:]] == [str(n) for n in range(10, 60)]


def test_close_restores_the_kafka_loggers(tmp_path, console):
    before = logging.getLogger("kafka.consumer").level
    KafkaTrace(trace_path(tmp_path)).install().close()
    assert logging.getLogger("kafka.consumer").level == before
    logging.getLogger("kafka.consumer.fetcher").debug("after close")
    assert "after close" not in console.getvalue()
