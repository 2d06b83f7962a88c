"""`KafkaTrace`: kafka-python's own activity (fetches, metadata, connections) during the reconciler passes that
could not audit a topic, in a size-bounded file beside the service's log (`reconciler-kafka.log`).

Why: after a broker restart the topic audit sometimes could not read a topic to its end, or read back a record
it had read, for minutes (docs/chaos.md, restart_kafka), and the service's log (kafka-python at INFO) cannot
tell why. kafka-python's records of every pass (DEBUG_LOGGERS at DEBUG) are kept in memory (the last `MAX_LINES` lines of the
pass, already formatted); the trace writes them out only for a pass that left a topic unread or unverified,
and drops them otherwise, so a normal run writes nothing. The file rotates at `MAX_BYTES` (`BACKUPS` old files
kept). The console (the service's log) still gets kafka-python's records at the root logger's level only.
"""

from __future__ import annotations

import collections
import logging
import logging.handlers
from pathlib import Path

FILE_NAME = "reconciler-kafka.log"
# kafka-python's loggers lowered to DEBUG: metadata, fetches and offsets, connecting and backing off, bytes sent and
# received. Not kafka.net.connection: at DEBUG it logs every request and response in full (a fetch response's
# records too). The trace keeps every kafka-python record that is logged, of these loggers and the others.
DEBUG_LOGGERS = ("kafka.cluster", "kafka.consumer", "kafka.net.manager", "kafka.net.inet", "kafka.net.transport")
MAX_LINES = 5000  # per pass
MAX_LINE_CHARS = 2000  # a metadata response can be long
MAX_BYTES = 1_000_000
BACKUPS = 4  # at most (1 + BACKUPS) * MAX_BYTES on disk
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger(__name__)


def trace_path(run_dir: Path) -> Path:
    """Where the reconciler of the stack in `run_dir` writes its trace (its servers' logs are there too)."""
    return Path(run_dir) / "logs" / FILE_NAME


class _PassBuffer(logging.Handler):
    """The formatted records of the current pass, the last MAX_LINES of them."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(FORMAT))
        self.lines: collections.deque[str] = collections.deque(maxlen=MAX_LINES)
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if len(self.lines) == self.lines.maxlen:
                self.dropped += 1
            self.lines.append(self.format(record)[:MAX_LINE_CHARS])
        except Exception:  # noqa: BLE001 - logging must never break a pass
            self.handleError(record)

    def take(self) -> tuple[list[str], int]:
        """The lines so far and how many were dropped (kafka-python logs from its own threads too)."""
        self.acquire()
        try:
            lines, dropped = list(self.lines), self.dropped
            self.lines.clear()
            self.dropped = 0
        finally:
            self.release()
        return lines, dropped


class _BelowRootLevel(logging.Filter):
    """Drops kafka-python's records below the root logger's level (what the console showed before the trace
    lowered DEBUG_LOGGERS to DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.getLogger().getEffectiveLevel() or not (
            record.name == "kafka" or record.name.startswith("kafka."))


class KafkaTrace:
    """`begin()` before a pass, `end(unfinished)` after it ({topic: why} of the topics it could not audit)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._buffer = _PassBuffer()
        self._console_filter = _BelowRootLevel()
        self._file: logging.Handler | None = None
        self._levels: dict[str, int] = {}

    def install(self) -> "KafkaTrace":
        for handler in logging.getLogger().handlers:
            handler.addFilter(self._console_filter)
        logging.getLogger("kafka").addHandler(self._buffer)
        for name in DEBUG_LOGGERS:
            self._levels[name] = logging.getLogger(name).level
            logging.getLogger(name).setLevel(logging.DEBUG)
        return self

    def begin(self) -> None:
        self._buffer.take()

    def end(self, unfinished: dict[str, str]) -> None:
        """Write the pass's kafka-python records when it left a topic unaudited; drop them otherwise."""
        lines, dropped = self._buffer.take()
        if not unfinished:
            return
        out = self._open()
        if out is None:
            return
        what = ", ".join(f"{topic} {why}" for topic, why in sorted(unfinished.items()))
        header = f"----- a reconciler pass left {what}: kafka-python's records of that pass"
        if dropped:
            header += f" (the first {dropped} not kept)"
        for line in [header, *lines]:
            out.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO, "levelname": "INFO"}))
        log.info("reconciler: kafka-python's records of this pass (%s) are in %s", what, self.path)

    def _open(self) -> logging.Handler | None:
        if self._file is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = logging.handlers.RotatingFileHandler(self.path, maxBytes=MAX_BYTES,
                                                                  backupCount=BACKUPS, delay=True)
            except OSError as exc:
                log.warning("reconciler: cannot write the Kafka trace %s: %s", self.path, exc)
                return None
            self._file.setFormatter(logging.Formatter("%(message)s"))
        return self._file

    def close(self) -> None:
        logging.getLogger("kafka").removeHandler(self._buffer)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self._levels.clear()
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self._console_filter)
        if self._file is not None:
            self._file.close()
            self._file = None
