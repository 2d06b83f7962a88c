"""Step 3 of a pass: announced identifications missing from the topics `identifications` / `new-individuals`
(the embedded broker keeps topics in memory: a restart loses them).

Per topic:
1. Redis time T0 is taken, then the topic is read from the stored positions up to its end offsets (taken after
   T0); every key read goes into `reconciler:seen:<topic>`. So every identification announced before T0, whose
   records were acknowledged before its announcement, has been read: consumer lag cannot look like a loss.
2. Reset: the topic's partitions changed, or the record before a stored position is not the one read there (the
   topic was emptied and maybe refilled), or the state partly expired -> the seen set, positions and check cursor
   are dropped and the topic is read again from the beginning; so is a topic whose end, as a fetch reports it,
   is before a stored position. When that record cannot be read back at all and no fetch says the topic ended
   before it ("unverified": after a broker restart, docs/chaos.md) the check waits,
   for at most `reconciler_unverified_passes_before_reset` passes in a row, then the topic is treated as reset.
   A reset is safe whenever it comes: a record produced again has the same key and content, and only sighting
   ids not read from the topic are produced again, after a read that reached the topic's end.
3. The `identifications` stream (one entry per announced identification) is walked from the check cursor (at
   most `reconciler_topic_lookback_s` back) up to min(T0, now - `reconciler_announce_grace_s`); an entry whose
   sighting id was never read from the topic is produced again: same key, same content. The cursor moves on.
"""

from __future__ import annotations

import logging
from typing import Callable

from services.chain import results
from services.chain.reconciler.findings import Findings
from services.chain.reconciler.kafka_io import PartitionReader
from services.chain.reconciler.state import Position, TopicState, text
from services.core import topics
from services.core.keys import IDENTIFICATIONS_STREAM
from services.core.settings import Settings

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 30.0
VERIFY_TIMEOUT_S = 3.0
PAGE = 500

# What `TopicAudit.run` did: checked the announced identifications, or left the check for the next pass because
# the topic was not read to its end, or because the record before a stored position could not be read back.
CHECKED, UNREAD, UNVERIFIED = "checked", "unread", "unverified"


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


class TopicAudit:
    """One topic: `only_new` for `new-individuals` (which carries new_individual identifications only).
    `unverified_passes`: the passes in a row just before this one that ended UNVERIFIED on this topic."""

    def __init__(self, settings: Settings, redis, reader: PartitionReader, produce: Callable[[list], list],
                 topic: str, only_new: bool = False, stream: str = IDENTIFICATIONS_STREAM,
                 unverified_passes: int = 0):
        self.settings = settings
        self.unverified_passes = unverified_passes
        self.redis = redis
        self.reader = reader
        self.produce = produce
        self.topic = topic
        self.only_new = only_new
        self.stream = stream
        self.state = TopicState(redis, topic, settings.redis_result_ttl_s)

    def _now_ms(self) -> int:
        seconds, micros = self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def run(self, findings: Findings) -> str:
        """Audit the topic: CHECKED, or UNREAD / UNVERIFIED when it could not be read to its end or its stored
        position not verified; the check then waits for the next pass."""
        t0_ms = self._now_ms()
        outcome, reset = self.sync(t0_ms)
        if reset:
            findings.add("topic_resets")
        if outcome != CHECKED:
            why = "not read to its end" if outcome == UNREAD else (
                f"the record before a stored position not read back, pass {self.unverified_passes + 1} in a row")
            log.warning("reconciler: %s: %s this pass: its check waits for the next pass", self.topic, why)
            findings.add("errors")
            return outcome
        upper = min(t0_ms, self._now_ms() - int(self.settings.reconciler_announce_grace_s * 1000))
        self.check(upper, findings)
        return CHECKED

    # ------------------------------------------------------------------ reading the topic
    def sync(self, now_ms: int) -> tuple[str, bool]:
        """Read the topic up to its end offsets; (CHECKED when read completely, else UNREAD / UNVERIFIED; the
        topic was found reset)."""
        partitions = self.reader.partitions()
        stored_partitions, positions = self.state.positions()
        reset_why = self._reset_reason(partitions, stored_partitions, positions)
        if reset_why == UNVERIFIED:
            if not self._waited_long_enough():
                return UNVERIFIED, False
            reset_why = (f"the record before its stored position could not be read back on "
                         f"{self.unverified_passes + 1} passes in a row")
        if reset_why:
            log.warning("reconciler: topic %s was reset (%s): reading it again from the beginning and checking "
                        "every identification of the last %d s against it", self.topic, reset_why,
                        self.settings.reconciler_topic_lookback_s)
            self.state.clear()
            positions = {}
        trim_before = now_ms / 1000 - self.settings.reconciler_topic_lookback_s
        if not partitions:  # the topic does not exist (yet, or any more): nothing on it
            self.state.save([], {}, {}, trim_before)
            return CHECKED, bool(reset_why)
        ends = self.reader.end_offsets(partitions)
        starts = {p: positions[p].next if p in positions else 0 for p in partitions}
        records, _, complete = self.reader.read(starts, ends, READ_TIMEOUT_S)
        seen: dict[str, float] = {}
        latest = dict(positions)
        for record in records:
            if record.key:
                seen[record.key] = max(seen.get(record.key, 0.0), record.ts / 1000)
            if record.partition not in latest or record.offset + 1 >= latest[record.partition].next:
                latest[record.partition] = Position(record.offset + 1, record.key, record.ts)
        self.state.save(partitions, latest, seen, trim_before)
        return CHECKED if complete else UNREAD, bool(reset_why)

    def _waited_long_enough(self) -> bool:
        """This is the `reconciler_unverified_passes_before_reset`-th pass in a row that cannot verify the stored
        position (never when that setting is 0)."""
        limit = self.settings.reconciler_unverified_passes_before_reset
        return 0 < limit <= self.unverified_passes + 1

    def _reset_reason(self, partitions: list[int], stored_partitions, positions: dict[int, Position]) -> str:
        """Why the stored state does not describe this topic any more ("" when it does; UNVERIFIED when the
        records before the positions could not be read)."""
        has_positions, has_seen = self.state.exists()
        if not has_positions and not has_seen:
            return ""  # first read
        if not (has_positions and has_seen):
            return "part of the reconciler's state of the topic expired"
        if stored_partitions and sorted(stored_partitions) != partitions:  # [] : the topic did not exist yet
            return f"partitions {sorted(stored_partitions)} -> {partitions}"
        expected = {p: pos for p, pos in positions.items() if pos.next > 0}
        found = self.reader.first_records({p: pos.next - 1 for p, pos in expected.items()}, VERIFY_TIMEOUT_S)
        for p, pos in expected.items():
            record = found.get(p)
            if record is not None and (record.offset, record.key, record.ts) != (pos.next - 1, pos.key, pos.ts):
                return (f"partition {p}: offset {record.offset} holds {record.key!r} written at {record.ts}, "
                        f"not {pos.key!r} written at {pos.ts}")
        unread = [p for p in expected if p not in found]
        if unread:
            # The end a fetch reported, not ListOffsets: Tansu lists the base offset of the last batch + 1, short
            # of the true end whenever a producer batched, which made a topic whose record merely did not come
            # back in time look emptied. A partition no fetch answered stays unverified.
            ends = self.reader.fetched_ends(unread)
            shorter = [p for p in unread if p in ends and ends[p] < expected[p].next]
            if shorter:
                return f"partition(s) {shorter} end before the offsets read earlier"
            return UNVERIFIED
        return ""

    # ------------------------------------------------------------------ checking the announced identifications
    def check(self, upper_ms: int, findings: Findings) -> None:
        lookback_start = (self._now_ms() - self.settings.reconciler_topic_lookback_s * 1000, 0)
        cursor = self.state.cursor()
        if cursor is None or _stream_id(cursor) < lookback_start:
            start = f"{lookback_start[0]}-0"
        else:
            start = "(" + cursor
        while True:
            entries = self.redis.xrange(self.stream, min=start, max=str(upper_ms), count=PAGE)
            if not entries:
                return
            due: list[topics.Identification] = []
            for _, fields in entries:
                raw = fields.get(b"identification") or fields.get("identification")
                try:
                    identification = topics.Identification.from_json(raw)
                except Exception:  # noqa: BLE001 - an entry no one can re-produce
                    findings.add("errors")
                    continue
                if identification.new_individual or not self.only_new:
                    due.append(identification)
            missing = set(self.state.missing([i.sighting_id for i in due]))
            lost = [i for i in due if i.sighting_id in missing]
            if lost:
                self.produce([(self.topic, i.sighting_id, self._value(i)) for i in lost])
                for identification in lost:
                    findings.add("missing_from_topic", identification.sighting_id)
                log.info("reconciler: %d identification(s) missing from %s produced again", len(lost), self.topic)
            last = text(entries[-1][0])
            self.state.set_cursor(last)
            start = "(" + last
            if len(entries) < PAGE:
                return

    def _value(self, identification: topics.Identification) -> bytes:
        if self.only_new:
            return results.new_individual_record(identification).to_json()
        return identification.to_json()
