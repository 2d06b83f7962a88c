"""The matcher's Faust agent: sightings.embedded -> rank against the gallery -> Redis + identifications topics.

Why Faust (not a kafka-python loop): the same consumer-group, commit and retry semantics as the worker
(shared `ChainStage`), timers (the gallery pointer, parked sightings), and a web page (`POST /gallery/reload/` on
the stage's Faust web port) for re-indexing to ask for an immediate hot swap.

Delivery is at least once, made idempotent by the sighting id (docs/interfaces.md, "Delivery"):
- Redis: the embedding is stored (`embedding:<id>`, idempotent overwrite) and the result written unless one exists
  (a re-delivered event finds the first result and re-uses it; one announced before is skipped), one atomic script
  for the batch after the search; the stream entry is added once (the `announced:<id>` marker and the XADD are one
  atomic script). So a re-delivery yields at most one result and one stream entry.
- Kafka topics `identifications` / `new-individuals`: at least once. A crash after producing and before the
  `announced:` marker re-produces on re-delivery, with the same key (the sighting id, also the records'
  `sighting_id` field) and the same content (the stored first result): consumers dedupe by key.

Versions: an embedding whose `model_version` is not among the served gallery's models (services.core.model_versions)
is parked (services.chain.parking), not dead-lettered, and retried after every gallery swap and every
`matcher_parked_retry_interval_s`.
"""

from __future__ import annotations

import asyncio
import logging
import math

import faust.web
import numpy as np

from services.chain import markers, parking, results
from services.chain.failures import PermanentFailure
from services.chain.faust_app import decode_original, make_app, raw_topic, run_app, use_event_loop
from services.chain.matcher.matching import Matcher, ModelState, limit_search_threads
from services.chain.stage import ChainStage
from services.core import topics
from services.core.access.admin_gate import AdminGate
from services.core.keys import IDENTIFICATIONS_STREAM
from services.core.metrics import END_TO_END_LATENCY, EVENTS, IDENTIFICATIONS, serve_metrics
from services.core.model_versions import VersionCheck, VersionChecker
from services.core.service_ports import default_port
from services.core.settings import Settings, redacted_url

log = logging.getLogger(__name__)
STAGE = "matcher"


class SightingMatcher(ChainStage):
    """Handles batches of raw sightings.embedded events (the agent's body) and retries the parked ones."""

    stage = STAGE

    def __init__(self, settings: Settings, matcher: Matcher, redis_client, identifications_topic, new_topic, dead_topic):
        super().__init__(settings, redis_client, dead_topic)
        self.matcher = matcher
        self.identifications_topic = identifications_topic
        self.new_topic = new_topic
        self.versions = VersionChecker(redis_client)
        self._retry_lock = asyncio.Lock()
        self._retry_again = False

    async def handle_batch(self, raws: list[bytes]) -> None:
        """The agent's body: never raises (an unexpected exception is retried, then dead-lettered `internal_error`
        event by event: ChainStage.handle_guarded), so Faust never acknowledges an unhandled batch."""
        await self.handle_guarded(list(raws), self._handle_batch)

    async def _handle_batch(self, raws: list[bytes]) -> None:
        """Parse, rank, then one Redis round trip for the results (`results.store_results`: embedding, the
        announced check, result) and one for the stream entries (`results.announce_many`) around the produce.
        The announced check is not made before the search: the search writes nothing, so a re-delivery of an
        announced sighting is ranked (rarely: after a crash or a rebalance) and then skipped by `store_results`;
        the two paths that write without a result, parking and dead-lettering, check first (`_unannounced`)."""
        records, embeddings = [], {}
        for raw in raws:
            try:
                record, as_json = _parse(raw)
            except PermanentFailure as exc:
                original = decode_original(raw)
                sighting_id = original.get("sighting_id", "") if isinstance(original, dict) else ""
                await self.dead_letter(exc, original, str(sighting_id))
                continue
            if record.sighting_id in embeddings:
                _skip_duplicate(record.sighting_id)
                continue
            embeddings[record.sighting_id] = as_json if as_json is not None else record.to_json()
            records.append(record)
        if not records:
            return
        state = self.matcher.state
        ready, refused = await self._check_versions(records, state)
        if refused:
            checks = {record.sighting_id: check for record, check in refused}
            for record in await self._unannounced([record for record, _ in refused], embeddings):
                await self._park(record, checks[record.sighting_id], state)
        if ready:
            await self._identify_and_publish(ready, state, embeddings)

    async def _unannounced(self, records: list[topics.SightingEmbedded],
                           embeddings: dict[str, bytes]) -> list[topics.SightingEmbedded]:
        """Store the records' embeddings, and return those not announced before (the others are re-deliveries:
        counted and logged as duplicates); one round trip."""
        announced = await self.in_thread("store embeddings", results.store_embeddings_and_check, self.redis, records,
                                         self.settings.redis_embedding_ttl_s,
                                         [embeddings[record.sighting_id] for record in records])
        fresh = []
        for record, done in zip(records, announced, strict=True):
            if done:
                _skip_duplicate(record.sighting_id)
            else:
                fresh.append(record)
        return fresh

    async def _check_versions(self, records: list[topics.SightingEmbedded], state: ModelState | None):
        """(records the gallery of `state` may rank, [(record, VersionCheck) it may not])."""
        model_ids = list(state.gallery.model_ids) if state is not None else []
        if not model_ids:  # the gallery does not say which models made it: every version is accepted
            return list(records), []
        checks = await self.in_thread("check model versions", lambda: [  # cached per version: one thread hop
            self.versions.check(record.model_version, model_ids) for record in records])
        ready, refused = [], []
        for record, check in zip(records, checks, strict=True):
            if check.ok:
                ready.append(record)
            else:
                refused.append((record, check))
        return ready, refused

    async def _park(self, record: topics.SightingEmbedded, check: VersionCheck, state: ModelState | None) -> None:
        await self.in_thread("park", parking.park, self.redis, record, check.reason, check.detail,
                             self.settings.matcher_parked_max)
        EVENTS.labels(stage=STAGE, outcome="parked").inc()
        log.warning("matcher: sighting %s parked (gallery %s cannot rank it, %s): %s", record.sighting_id,
                    state.version if state else "none", check.reason, check.detail)

    async def retry_parked(self, why: str) -> int:
        """Identify the parked sightings the served gallery now matches; returns how many left the park. A call
        during a retry makes that retry run once more (against the gallery served then) instead of waiting."""
        if self._retry_lock.locked():
            self._retry_again = True
            return 0
        done = 0
        async with self._retry_lock:
            while True:
                self._retry_again = False
                done += await self._retry_parked_once(why)
                if not self._retry_again:
                    return done

    async def _retry_parked_once(self, why: str) -> int:
        if not await self.in_thread("count parked", parking.parked_count, self.redis):
            return 0
        state = self.matcher.state
        done, offset, page_size = 0, 0, 500
        while True:
            page = await self.in_thread("read parked", parking.parked_page, self.redis, offset, page_size)
            if not page:
                break
            unreadable = [sighting_id for sighting_id, record in page if record is None]
            records = [record for _, record in page if record is not None]
            announced, pending = [], []
            done_before = await self.in_thread("check results", results.announced_many, self.redis,
                                               [record.sighting_id for record in records])
            for record, was_announced in zip(records, done_before, strict=True):
                (announced if was_announced else pending).append(record.sighting_id)
            by_id = {r.sighting_id: r for r in records}
            ready, _ = await self._check_versions([by_id[i] for i in pending], state)
            for start in range(0, len(ready), self.settings.worker_batch_size):
                await self._identify_and_publish(ready[start:start + self.settings.worker_batch_size], state)
            leaving = unreadable + announced + [r.sighting_id for r in ready]
            await self.in_thread("unpark", parking.unpark, self.redis, leaving)
            for sighting_id in unreadable:
                log.error("matcher: parked sighting %s has an unreadable record: dropped from the park", sighting_id)
            done += len(leaving)
            offset += len(page) - len(leaving)
        left = await self.in_thread("count parked", parking.parked_count, self.redis)
        if done:
            EVENTS.labels(stage=STAGE, outcome="unparked").inc(done)
        log.info("matcher: parked sightings retried (%s) against gallery %s: %d left the park, %d still parked",
                 why, state.version if state else "none", done, left)
        return done

    async def _identify_and_publish(self, records: list[topics.SightingEmbedded], state: ModelState | None = None,
                                    embeddings: dict[str, bytes] | None = None) -> None:
        """Rank and publish `records`. `embeddings` (sighting id -> SightingEmbedded JSON): the records of a new
        batch, whose embeddings are stored with the results; None: parked records, stored and checked before."""
        try:
            with self.timed_step("search"):
                identified = await asyncio.to_thread(self.matcher.identify, records, state)
        except PermanentFailure as exc:
            if len(records) == 1:
                if embeddings is None or await self._unannounced(records, embeddings):
                    await self.dead_letter(exc, records[0].to_data(), records[0].sighting_id)
                return
            for record in records:  # isolate the one that cannot be ranked
                await self._identify_and_publish([record], state, embeddings)
            return
        with self.timed_step("publish"):
            await self._publish(identified, embeddings)

    async def _publish(self, identified: list[topics.Identification], embeddings: dict[str, bytes] | None) -> None:
        """For each sighting, in this order: the embedding and the result (first one wins; nothing for a sighting
        announced before), the topics (at least once, keyed by sighting id), then the stream entry (once). A batch
        takes one Redis round trip per step (`store_results`, `announce_many`), with the Kafka acknowledgements
        between them: the stream entry (and its `announced:` marker, which makes a re-delivery skip the sighting)
        is written only once the topics hold the record, and the result is stored before anything is produced, so
        a re-delivery re-produces the same content. Each identification is encoded to JSON once."""
        stored = await self.in_thread(
            "store results", results.store_results, self.redis, identified,
            None if embeddings is None else [embeddings[i.sighting_id] for i in identified],
            self.settings.redis_embedding_ttl_s, self.settings.redis_result_ttl_s)
        fresh = []
        for result in stored:
            if result.announced:
                _skip_duplicate(result.identification.sighting_id)
            else:
                fresh.append(result)
        if not fresh:
            return
        await asyncio.gather(  # each topic's records produced at once, every acknowledgement awaited
            self.send_many(self.identifications_topic, [(s.identification.sighting_id, s.encoded) for s in fresh]),
            self.send_many(self.new_topic, [(s.identification.sighting_id,
                                             results.new_individual_record(s.identification).to_json())
                                            for s in fresh if s.identification.new_individual]))
        firsts = await self.in_thread("announce", results.announce_many, self.redis,
                                      [s.identification for s in fresh], self.settings.redis_marker_ttl_s,
                                      self.settings.redis_stream_maxlen, IDENTIFICATIONS_STREAM,
                                      [s.encoded for s in fresh])
        for result, first in zip(fresh, firsts, strict=True):
            identification = result.identification
            if first:
                IDENTIFICATIONS.labels(result="new_individual" if identification.new_individual else "known").inc()
                if identification.uploaded_at:
                    END_TO_END_LATENCY.observe(max(0.0, identification.identified_at - identification.uploaded_at))
        EVENTS.labels(stage=STAGE, outcome="identified").inc(len(fresh))


def _skip_duplicate(sighting_id: str) -> None:
    EVENTS.labels(stage=STAGE, outcome="duplicate").inc()
    log.info("sighting %s: already identified, skipping the duplicate", sighting_id)


_WIRE_FIELDS: list[str] | None = None  # the keys of the current record version's JSON, in order


def _wire_fields() -> list[str]:
    global _WIRE_FIELDS
    if _WIRE_FIELDS is None:
        _WIRE_FIELDS = list(topics.SightingEmbedded(sighting_id="", embedding=[1.0], model_version="").to_data())
    return _WIRE_FIELDS


def _parse(raw: bytes) -> tuple[topics.SightingEmbedded, bytes | None]:
    """(the record, `raw` itself when it is the current record version with exactly its fields in their order:
    then it is the JSON value `store_embedding` would write, which need not be encoded again; else None).
    A malformed record or one of a version this reader does not know: PermanentFailure with the reason
    (`malformed_event`, `unsupported_record_version`)."""
    try:
        data = topics.loads(raw)
        record = topics.SightingEmbedded.from_data(data)
    except topics.RecordError as exc:
        raise PermanentFailure(exc.reason, str(exc)) from None
    except Exception as exc:  # noqa: BLE001
        raise PermanentFailure("malformed_event", f"not a SightingEmbedded record: {exc}") from None
    if not record.sighting_id or not isinstance(record.sighting_id, str) or not len(record.embedding):
        raise PermanentFailure("malformed_event", "sighting_id and embedding are required")
    if not _valid_embedding(record.embedding):  # it would fail the whole batch's search (and crash the agent)
        raise PermanentFailure("malformed_event", "the embedding must be finite numbers, not a zero vector")
    if not _valid_scores(record.species_scores):
        raise PermanentFailure("malformed_event", "species_scores must map species names to finite probabilities")
    if data.get("local_features") is not None:  # what Redis keeps (`embedding:<id>`) is the record without them
        stripped = {k: v for k, v in data.items() if k != "local_features"}
        if list(stripped) != _wire_fields():  # not our writer's order: the canonical JSON of the stripped record
            return record, topics.SightingEmbedded.from_data(stripped).to_json()
        return record, topics.dumps(stripped)
    return record, (bytes(raw) if list(data) == _wire_fields() else None)


def _valid_embedding(values) -> bool:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return array.ndim == 1 and bool(np.isfinite(array).all()) and float(np.linalg.norm(array)) >= 1e-12  # as l2_normalise


def _valid_scores(scores) -> bool:
    if scores is None:
        return True
    return isinstance(scores, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in scores.values())


def build_matcher_app(settings: Settings, web_port: int, matcher: Matcher | None = None):
    """The matcher's Faust app: the agent, the gallery-pointer timer and the reload page."""
    from services.curation.operations.gallery_versions import GalleryStore

    if matcher is None:
        matcher = Matcher(settings, GalleryStore.from_settings(settings))
        matcher.reload()  # a matcher without a gallery cannot work: fail at start with the reason
    app = make_app(settings, STAGE, web_port)
    embedded = raw_topic(app, topics.SIGHTINGS_EMBEDDED)
    handler = SightingMatcher(
        settings, matcher, markers.redis_client(settings.redis_url),
        raw_topic(app, topics.IDENTIFICATIONS), raw_topic(app, topics.NEW_INDIVIDUALS), raw_topic(app, topics.DEAD_LETTER),
    )

    @app.agent(embedded)
    async def identify_sightings(stream):
        async for raws in stream.take(settings.worker_batch_size, within=settings.worker_batch_wait_s):
            await handler.handle_batch(list(raws))

    async def reload_now() -> bool:
        try:
            return await asyncio.to_thread(matcher.reload)
        except Exception as exc:  # noqa: BLE001 - keep serving the current version
            log.warning("matcher: gallery reload failed, still serving %s: %s",
                        matcher.state.version if matcher.state else "nothing", exc)
            return False

    background: set[asyncio.Task] = set()

    async def reload_and_retry() -> bool:
        """Re-read the pointer; after a swap, retry the parked sightings in the background (the reload page
        answers at once)."""
        swapped = await reload_now()
        if swapped:
            task = asyncio.ensure_future(retry_parked_safely("gallery swap"))
            background.add(task)
            task.add_done_callback(background.discard)
        return swapped

    async def retry_parked_safely(why: str) -> None:
        try:
            await handler.retry_parked(why)
        except Exception as exc:  # noqa: BLE001 - the next timer tries again; nothing leaves the park unhandled
            log.warning("matcher: retrying parked sightings failed (%s): %s", why, exc)

    @app.timer(interval=settings.matcher_reload_interval_s)
    async def poll_gallery_pointer():
        await reload_and_retry()

    @app.timer(interval=settings.matcher_parked_retry_interval_s)
    async def retry_parked():
        await retry_parked_safely("timer")

    def served() -> str | None:
        return matcher.state.version if matcher.state else None

    admin_gate = AdminGate(settings)

    @app.page("/gallery/reload/")
    class GalleryReload(faust.web.View):
        """GET: the served version; POST (an admin's bearer token): re-read the pointer now, hot-swap if it moved."""

        async def get(self, request):
            return self.json({"version": served()})

        async def post(self, request):
            refusal = admin_gate.refusal(request.headers.get("Authorization"))
            if refusal is not None:
                return self.json({"error": refusal[1]}, status=refusal[0])
            swapped = await reload_and_retry()
            return self.json({"swapped": swapped, "version": served()})

    app.whaleid_matcher = matcher
    app.whaleid_handler = handler
    return app


def run_matcher(settings: Settings, index: int = 0, web_port: int | None = None, metrics_port: int | None = None) -> int:
    web_port = web_port if web_port is not None else default_port(settings.faust_web_port_base, STAGE, index)
    metrics_port = metrics_port if metrics_port is not None else default_port(settings.metrics_port_base, STAGE, index)
    search_threads = limit_search_threads(settings.matcher_search_threads)
    use_event_loop(settings.event_loop)  # before the app: its loops come from the policy
    app = build_matcher_app(settings, web_port)
    serve_metrics(metrics_port, settings.metrics_host)
    log.info("matcher %d: Kafka %s, Redis %s, web port %d, metrics port %d, FAISS threads %d",
             index, settings.kafka_bootstrap, redacted_url(settings.redis_url), web_port, metrics_port, search_threads)
    run_app(app)
    return 0
