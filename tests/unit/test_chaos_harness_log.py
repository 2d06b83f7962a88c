"""`whaleid chaos` keeps its console to warnings (none of the Kafka client's reconnects) and writes its own log,
reconnects included, to harness.log in the run's log folder."""

from __future__ import annotations

import logging

from services.devtools.chaos.cli import _console_records
from services.devtools.chaos.suite import harness_log


def _record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "message from %s", (name,), None)


def test_the_console_shows_warnings_but_not_the_kafka_clients_errors():
    assert not _console_records(_record("services.devtools.chaos.observe", logging.INFO))
    assert _console_records(_record("services.devtools.chaos.observe", logging.WARNING))
    assert not _console_records(_record("kafka.net.connection", logging.ERROR))
    assert _console_records(_record("kafka.net.connection", logging.CRITICAL))


def test_the_harness_log_gets_info_records_with_their_time_and_is_detached_by_the_caller(tmp_path):
    path = tmp_path / "logs" / "harness.log"
    handler = harness_log(path)
    logger = logging.getLogger("kafka.test_chaos_harness_log")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        logger.info("reconnecting to %s", "127.0.0.1:9092")
        logger.debug("not written")
    finally:
        logger.setLevel(level)
        logging.getLogger().removeHandler(handler)
        handler.close()
    text = path.read_text()
    assert "INFO kafka.test_chaos_harness_log: reconnecting to 127.0.0.1:9092" in text
    assert "not written" not in text
    assert handler not in logging.getLogger().handlers
