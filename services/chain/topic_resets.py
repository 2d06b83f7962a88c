"""Recovery of a Faust stage from a partition whose log was reset under it: a broker that came back without its
data (the embedded Tansu keeps topics in memory), a topic deleted and created again, an unclean leader election
or retention that removed what the stage had not read. On real Kafka each shows as an offset out of range.

Why a stage needs help: Faust keeps, per partition, the offset it read last (`_read_offset`) and drops every
message below it as already seen. When the log restarts from 0, the consumer's fetch is answered
OffsetOutOfRange and aiokafka moves its position to the earliest offset (`auto_offset_reset`), but Faust would
still drop each new message until the offsets passed the old ones, and commit offsets that mean nothing in the
new log: the stage sits silently while the reconciler's re-drives vanish the same way.

The policy (`install(app, interval_s)`), on every Faust consumer of the chain:

1. **At once, on the fetch path**: a message delivered below the partition's read offset means the consumer's
   position went back without the stage seeking, which only an offset-out-of-range reset does: the partition
   was reset. Faust's state for it (read, committed and acked offsets, gaps) is dropped, as a rebalance does
   for a revoked partition, and the message and everything after it are handled. Nothing is dropped silently.
2. **Every `interval_s` (a timer)**, for the partitions that get no message: a partition whose high-water mark
   (the next offset the broker will write, from the last fetch) is below the read offset, or fell below
   the highest high-water mark seen on it before (a log never shrinks), was reset: its state is dropped and it
   is read again from its start. The second test catches a log that refilled past a lagging stage's position.
3. **Every `interval_s`, the stage's input topics exist**: after a broker lost its topics, Faust's rebalance
   (its commit before giving partitions up) retries for as long as the input topic is unknown to the broker, so
   a stage would stall until some producer happens to create it again, and the next stage waits on this one.
   A topic the agents read that the broker does not list is created (as Faust does at start: the app's
   partition count and replication factor).
4. **Every `interval_s`, a topic created again** (its topic id changed; Kafka >= 2.8 and Tansu give ids): every
   assigned partition of it is read again from its start, however far the new log has grown (the case rules 1
   and 2 can miss: a stage whose position is still inside the refilled log and which never saw the mark fall).

Either way the partition is read from the start of the log the broker now has ("earliest"): the stages are
idempotent by sighting id, so reading again what was handled costs time, not duplicates. What the broker lost
for good is the reconciler's to re-drive (services/chain/reconciler). On a broker that keeps its data none of this
triggers.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_PARTITION_STATE = ("_read_offset", "_committed_offset", "_acked", "_acked_index", "_gap")


def forget(consumer, tp) -> None:
    """Drop Faust's own state of one partition (what `on_partitions_revoked` does)."""
    for name in _PARTITION_STATE:
        state = getattr(consumer, name, None)
        if state is not None:
            state.pop(tp, None)
    marks = getattr(consumer, "_whaleid_highwater", None)
    if marks is not None:
        marks.pop(tp, None)


async def forget_and_rewind(consumer, tp) -> None:
    forget(consumer, tp)
    await consumer.seek(tp, 0)


def below_read_offset(consumer, tp, offset: int) -> int | None:
    """The read offset when `offset` is below it (the partition was reset), else None."""
    read = consumer._read_offset.get(tp)
    if read is not None and offset < read:
        return read
    return None


def reset_partitions(consumer) -> list:
    """The assigned partitions that were reset: (tp, read offset, high-water mark, why). Updates the highest
    high-water mark seen per partition (`consumer._whaleid_highwater`)."""
    marks = consumer.__dict__.setdefault("_whaleid_highwater", {})
    reset = []
    for tp in list(consumer.assignment()):
        try:
            high = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not fetched yet after a reconnect: look again next time
            continue
        if high is None:
            continue
        read = consumer._read_offset.get(tp)
        seen = marks.get(tp)
        if read is not None and high < read:
            reset.append((tp, read, high, f"high-water mark {high} below offset {read} read before"))
        elif seen is not None and high < seen:
            reset.append((tp, read, high, f"high-water mark fell from {seen} to {high}"))
        else:
            marks[tp] = max(high, seen or 0)
    return reset


async def guarded(consumer, messages):
    """The (tp, message) pairs of `messages`; a message below its partition's read offset first drops Faust's
    state of that partition (rule 1), so Faust's fetch loop handles it instead of dropping it as seen."""
    async for tp, message in messages:
        read = below_read_offset(consumer, tp, message.offset)
        if read is not None:
            log.warning("%s [%d] was reset under the stage (a message at offset %d, below offset %d read before): "
                        "reading the new log from there", tp.topic, tp.partition, message.offset, read)
            forget(consumer, tp)
        yield tp, message


def guard_getmany() -> None:
    """Make Faust's fetch path apply rule 1 of the module's docstring (once per process, every app)."""
    from faust.transport import consumer as faust_consumer

    cls = faust_consumer.Consumer
    if getattr(cls.getmany, "__whaleid_guard__", False):
        return
    original = cls.getmany

    def getmany(self, timeout: float):
        return guarded(self, original(self, timeout))

    getmany.__whaleid_guard__ = True
    getmany.__wrapped__ = original
    cls.getmany = getmany


def agent_topics(app) -> list[str]:
    """The topics the app's agents read."""
    names = set()
    for agent in app.agents.values():
        names.update(getattr(agent.channel, "topics", ()) or ())
    return sorted(names)


class TopicKeeper:
    """Rules 3 and 4: creates the stage's input topics when the broker does not list them, and notices a topic
    created again (a new topic id: Kafka >= 2.8 and Tansu give each topic one). A kafka-python admin client, made
    on first use and again after an error."""

    def __init__(self, admin_options: dict, partitions: int, replication: int):
        self.admin_options = admin_options
        self.partitions = partitions
        self.replication = replication
        self.ids: dict[str, str] = {}  # topic -> the id it had when last seen
        self._admin = None

    def _client(self):
        from kafka import KafkaAdminClient

        if self._admin is None:
            self._admin = KafkaAdminClient(**self.admin_options, client_id="whaleid-topic-keeper",
                                           request_timeout_ms=5000)
        return self._admin

    def _topic_ids(self, names: list[str]) -> dict[str, str | None]:
        """{topic: its id, or None when the broker does not have it}."""
        admin = self._client()
        present = set(admin.list_topics())
        ids: dict[str, str | None] = {name: None for name in names}
        wanted = [name for name in names if name in present]
        if wanted:
            for entry in admin.describe_topics(wanted):
                if entry.get("error_code", 0) == 0 and entry.get("name") in ids:
                    ids[entry["name"]] = str(entry.get("topic_id") or "") or ""
        return ids

    def check(self, names: list[str]) -> tuple[list[str], list[str]]:
        """(the topics of `names` created now, the topics whose id changed since the last check)."""
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        if not names:
            return [], []
        try:
            ids = self._topic_ids(names)
            missing = sorted(name for name, topic_id in ids.items() if topic_id is None)
            if missing:
                try:
                    self._client().create_topics([NewTopic(name, self.partitions, self.replication)
                                                  for name in missing])
                except TopicAlreadyExistsError:
                    pass
            changed = []
            for name, topic_id in ids.items():
                if not topic_id:  # missing (just created: its id is read next time) or not reported
                    continue
                before = self.ids.get(name)
                if before is not None and before != topic_id:
                    changed.append(name)
                self.ids[name] = topic_id
            return missing, sorted(changed)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except Exception as exc:  # noqa: BLE001 - a client of a broker that went away
                log.debug("closing the admin client: %s", exc)


def install(app, interval_s: float, admin_options: dict | None = None) -> None:
    """Rules 1 to 4 for `app` (2 to 4 only with an interval; 3 and 4 only with `admin_options`, the kafka-python
    connection options)."""
    import asyncio

    guard_getmany()
    if not interval_s:
        return
    keeper = (TopicKeeper(admin_options, app.conf.topic_partitions, app.conf.topic_replication_factor)
              if admin_options is not None else None)

    @app.timer(interval=interval_s)
    async def rewind_reset_partitions():
        consumer = app.consumer
        for tp, _read, _high, why in reset_partitions(consumer):
            log.warning("%s [%d] was reset by the broker (%s): reading it again from its start",
                        tp.topic, tp.partition, why)
            await forget_and_rewind(consumer, tp)

    if keeper is None:
        return

    @app.timer(interval=interval_s)
    async def keep_input_topics():
        try:
            created, changed = await asyncio.to_thread(keeper.check, agent_topics(app))
        except Exception as exc:  # noqa: BLE001 - the broker is away: look again next time
            log.info("checking the input topics: %s: %s", type(exc).__name__, exc)
            return
        if created:
            log.warning("the broker lost the input topic(s) %s: created them again", ", ".join(created))
        if changed:
            consumer = app.consumer
            for tp in sorted(tp for tp in consumer.assignment() if tp.topic in changed):
                log.warning("%s [%d] belongs to a topic created again (a new topic id): reading it from its start",
                            tp.topic, tp.partition)
                await forget_and_rewind(consumer, tp)

