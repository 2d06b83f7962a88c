"""What one reconciler pass found: counts per kind (what `run_once()` returns) and the sighting ids behind them."""

from __future__ import annotations

from typing import Callable, Sequence

# Lost work found and repaired (whaleid_reconciler_found_total{kind}; the alert fires on any of them).
FOUND_KINDS = ("redriven", "unresolved", "object_missing", "unannounced", "missing_from_topic")
# Sightings still open at the pass (whaleid_reconciler_sightings{state}).
OPEN_STATES = ("pending", "deferred", "awaiting_upload")
# Everything else a pass reports.
OTHER_KINDS = ("sightings", "topic_resets", "errors")
KINDS = FOUND_KINDS + OPEN_STATES + OTHER_KINDS


class Findings:
    """Counts of one pass, the ids per kind, and the chain backlog asked once per pass (only when needed)."""

    def __init__(self, backlog: Callable[[], str | None]):
        self.counts = dict.fromkeys(KINDS, 0)
        self.ids: dict[str, list[str]] = {kind: [] for kind in KINDS}
        self._backlog = backlog
        self._backlog_reason: str | None = None
        self._backlog_asked = False

    def add(self, kind: str, sighting_id: str = "", count: int = 1) -> None:
        self.counts[kind] += count
        if sighting_id:
            self.ids[kind].append(sighting_id)

    def backlog(self) -> str | None:
        """Why the chain is behind (a consumer group with a backlog), or None when it caught up."""
        if not self._backlog_asked:
            self._backlog_reason = self._backlog()
            self._backlog_asked = True
        return self._backlog_reason

    def found(self) -> dict[str, int]:
        return {kind: self.counts[kind] for kind in FOUND_KINDS if self.counts[kind]}

    def summary(self) -> str:
        found = ", ".join(f"{kind} {count}" for kind, count in self.found().items()) or "nothing lost"
        open_ = ", ".join(f"{state} {self.counts[state]}" for state in OPEN_STATES)
        extra = "".join(f", {kind} {self.counts[kind]}" for kind in ("topic_resets", "errors") if self.counts[kind])
        return f"{found} ({open_} of {self.counts['sightings']} sightings{extra})"


def read_index(redis, key: str, handle: Callable[[list[str]], int], chunk: int, until: float | str = "+inf") -> None:
    """Hand the members of the sorted set `key` with score <= `until` to `handle`, `chunk` at a time, oldest first;
    `handle` returns how many of them it took out of the set, so the next chunk starts where this one ended."""
    offset = 0
    while True:
        members: Sequence = redis.zrangebyscore(key, "-inf", until, start=offset, num=chunk)
        if not members:
            return
        ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
        offset += len(ids) - handle(ids)
        if len(ids) < chunk:
            return
