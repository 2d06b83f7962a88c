"""A bounded, quiet shutdown for a stage whose servers went away.

A Faust stage stopped (SIGTERM) while its broker is gone waits 60 s for aiokafka's consumer to stop (it retries
the group's coordinator: mode's shutdown_timeout), then prints CancelledError/TimeoutError tracebacks. With the
broker there it stops in about 1.5 s. `exit_after(...)`, armed when the stop begins, ends the process quietly once
the broker does not answer (at once, or after `grace_s` into the stop) (nothing is lost: offsets not committed are
re-delivered, and every stage is idempotent), or after `limit_s` whatever happens."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time

log = logging.getLogger(__name__)
GRACE_S = 3.0  # the stop's time before it is cut short when the broker does not answer
LIMIT_S = 20.0  # the stop's time before it is cut short in any case


def reachable(bootstrap: str, timeout: float = 1.0) -> bool:
    """True when one of the `host:port[,host:port]` addresses accepts a TCP connection."""
    for address in (a.strip() for a in (bootstrap or "").split(",") if a.strip()):
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


def _exit(reason: str) -> None:
    log.warning("stopping now: %s", reason)
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _quiet_cancellation(args) -> None:
    """During the stop, a client thread cancelled mid-retry (aiokafka's fetcher) is expected: one log line, no
    traceback."""
    import asyncio

    if issubclass(args.exc_type, asyncio.CancelledError):
        log.info("thread %s cancelled by the stop", getattr(args.thread, "name", "?"))
        return
    sys.__excepthook__(args.exc_type, args.exc_value, args.exc_traceback)


def exit_after(bootstrap: str, grace_s: float = GRACE_S, limit_s: float = LIMIT_S) -> threading.Thread:
    """Arm the deadline (a daemon thread; the process normally exits before it fires)."""

    def watch() -> None:
        began = time.monotonic()
        if not reachable(bootstrap, timeout=0.5):
            _exit(f"the broker {bootstrap} does not answer")
        time.sleep(grace_s)
        while time.monotonic() - began < limit_s:
            if not reachable(bootstrap):
                _exit(f"the broker {bootstrap} does not answer {grace_s:.0f} s into the stop")
            time.sleep(1.0)
        _exit(f"the stop took over {limit_s:.0f} s")

    threading.excepthook = _quiet_cancellation
    thread = threading.Thread(target=watch, name="exit-deadline", daemon=True)
    thread.start()
    return thread
