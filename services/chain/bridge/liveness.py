"""`bridge:alive:<owner>` while a bridge process lives: what lets another bridge take over its claims once it died.

A daemon thread sets the key (TTL `bridge_liveness_ttl_s`) at start and every third of the TTL after, so a poll
loop that blocks (a flush waiting through a broker restart, a Redis call timing out) does not let it lapse while
the process is alive. A SIGKILLed bridge's key expires within the TTL; a bridge that stops cleanly deletes it, so
its claims (none should be left: each batch releases or finishes its own) are free at once. A refresh that
fails (Redis down) is retried at the next tick, logged once per outage; a refresh is a PEXPIRE, which Redis
still takes while it refuses writes at `maxmemory` (chaos redis_maxmemory refused SET for 7 s of a 10 s TTL).
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from services.core.errors import ConfigError
from services.core.keys import bridge_alive_key

log = logging.getLogger(__name__)


class Liveness:
    def __init__(self, redis, owner: str, ttl_s: float):
        if not ttl_s > 0:
            raise ConfigError(f"bridge_liveness_ttl_s must be > 0, got {ttl_s!r}")
        self.redis = redis
        self.key = bridge_alive_key(owner)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.interval_s = ttl_s / 3
        self.value = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def beat(self) -> bool:
        """Extend the key's TTL (PEXPIRE: allowed while Redis refuses writes at `maxmemory`, where SET is not), or
        set it when it is missing; False (logged once per outage) when Redis did not take it."""
        try:
            if not self.redis.pexpire(self.key, self.ttl_ms):
                self.redis.set(self.key, self.value, px=self.ttl_ms)
        except Exception as exc:  # noqa: BLE001 - retried at the next tick; the claims wait meanwhile
            if not self._failing:
                log.warning("bridge: could not refresh %s (retried every %.1f s): %s", self.key, self.interval_s, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("bridge: %s refreshed again", self.key)
        self._failing = False
        return True

    def start(self) -> None:
        """The first beat now (before the bridge claims anything), then a beat every third of the TTL."""
        if self._thread is not None:
            return
        self.beat()
        self._thread = threading.Thread(target=self._run, name="bridge-liveness", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def stop(self) -> None:
        """Stop refreshing and delete the key (a clean shutdown: the owner is gone at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval_s + 10)
        try:
            self.redis.delete(self.key)
        except Exception as exc:  # noqa: BLE001 - it expires within the TTL anyway
            log.warning("bridge: could not delete %s (it expires by itself): %s", self.key, exc)

    def __enter__(self) -> Liveness:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
