"""`run_reconciler(settings)`: a pass every `reconciler_interval_s` until SIGTERM / SIGINT (or `stop`).

Logs `reconciler: first pass done` once its first pass ran (services.devtools.demo.processes.READY_TEXT), then one line per
pass that found lost work. /metrics on `--metrics-port` (default metrics_port_base + 4; 0 = none). kafka-python's
records of a pass that could not audit a topic go to `<run_dir>/logs/reconciler-kafka.log` (kafka_trace.py).
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from services.chain.failures import Backoff
from services.chain.reconciler.kafka_trace import KafkaTrace, trace_path
from services.chain.reconciler.reconciler import LeaseHeld, Reconciler
from services.core.errors import ConfigError
from services.core.metrics import serve_metrics
from services.core.service_ports import default_port
from services.core.settings import Settings

log = logging.getLogger(__name__)

READY_LINE = "reconciler: first pass done"


def default_metrics_port(settings: Settings) -> int:
    return default_port(settings.metrics_port_base, "reconciler")


class _Stopper:
    """SIGTERM / SIGINT set `stop`; during a pass they also end it at once (a pass waits on Kafka for as long as
    the broker is away; what it did so far is idempotent and its lease is released on the way out)."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.in_pass = False

    def __call__(self, signum, frame) -> None:
        self.stop.set()
        if self.in_pass:
            raise SystemExit(0)

    def install(self) -> "_Stopper":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self)
        return self


def run_reconciler(settings: Settings, stop: threading.Event | None = None, metrics_port: int | None = None) -> int:
    stop = stop or threading.Event()
    metrics_port = default_metrics_port(settings) if metrics_port is None else metrics_port
    if metrics_port:
        try:
            serve_metrics(metrics_port, settings.metrics_host)
        except OSError as exc:
            raise ConfigError(f"the reconciler cannot serve /metrics on {settings.metrics_host}:{metrics_port}: "
                              f"{exc} (pass --metrics-port PORT, or 0 for none)") from None
    stopper = _Stopper(stop).install()
    reconciler = Reconciler(settings)
    trace = KafkaTrace(trace_path(settings.run_dir)).install()
    log.info("reconciler: Redis %s, Kafka %s, a pass every %g s (stale after %g s, at most %d re-drives), "
             "metrics port %s", settings.redis_url, settings.kafka_bootstrap, settings.reconciler_interval_s,
             settings.reconciler_stale_after_s, settings.reconciler_max_redrives, metrics_port or "none")
    backoff = Backoff(settings.retry_backoff_initial_s, settings.retry_backoff_max_s)
    first = True
    deferred_logged = 0.0  # when the reason for deferring was last logged (at most every 10 s)
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                stopper.in_pass = True
                trace.begin()
                try:
                    reconciler.run_once(wait_s=0)
                finally:
                    stopper.in_pass = False
                trace.end(reconciler.last_unfinished)
                findings = reconciler.last_findings
            except LeaseHeld:
                findings = None
                log.debug("reconciler: another pass is running; waiting for the next interval")
            except Exception as exc:  # noqa: BLE001 - Redis down: try again after a pause
                delay = backoff.next_delay()
                log.warning("reconciler: pass failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay)
                stop.wait(delay)
                continue
            backoff.reset()
            took = time.monotonic() - started
            if first:
                log.info("%s in %.2f s: %s", READY_LINE, took,
                         findings.summary() if findings else "another reconciler's pass was running")
                first = False
            elif findings is not None and findings.found():
                log.info("reconciler pass: %s in %.2f s", findings.summary(), took)
            if findings is not None and findings.counts["deferred"] and time.monotonic() - deferred_logged > 10:
                log.info("reconciler: %d stale sighting(s) deferred: %s", findings.counts["deferred"],
                         findings.backlog())
                deferred_logged = time.monotonic()
            stop.wait(settings.reconciler_interval_s)
    finally:
        reconciler.close()
        trace.close()
        log.info("reconciler stopped")
    return 0
