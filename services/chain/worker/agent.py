"""The worker's Faust agent: sightings.uploaded -> (S3, validate, crop, Triton) -> sightings.embedded.

Batches: the agent takes what is waiting (up to `worker_batch_size`, `worker_batch_wait_s`) so one Triton call
embeds several crops. Permanent failures go to sightings.dead-letter and Redis `failure:<id>`; transient ones
(S3, Triton, Redis, Kafka unavailable) are retried with backoff inside the agent, so the offset does not move
past an event before it is handled: nothing is lost. Duplicates (re-delivery after a crash, duplicate events)
are skipped by the Redis markers.

Triton failures are classified by `services.serving.triton_client.failures.classify`: overload (timeouts, deadline
exceeded, full queues), unavailability and a model that is not loaded are transient whatever Triton's health
says: back off and retry, never dead-letter. Only a refusal of the input (INVALID_ARGUMENT, a model error) is
permanent: a batch is then split so each crop is tried alone, and a crop refused `REFUSALS_BEFORE_DEAD_LETTER`
times is dead-lettered (`embedding_failed`).

Model version: read from Triton at start-up (`<model>:<version>[:<build_id>]`, the ensemble's config
parameters, its species names), never per batch. It is read again on the reload path: `POST /model/reload/` on
the worker's Faust web port (an admin's token; what reloads Triton calls it, then the next batch is tagged with
the new version), after any transient Triton failure (the server may have restarted with another model), when
the model refuses an input, and every MODEL_CHECK_S by a timer (a reload nobody announced: until then, at most
that long, embeddings are tagged with the version read before). Each served version is registered in Redis with
the export model ids it blends (services.core.model_versions) before records carrying it are published.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faust.web

from services.chain import markers
from services.chain.failures import PermanentFailure, TransientFailure
from services.chain.faust_app import decode_original, make_app, raw_topic, run_app, use_event_loop
from services.chain.stage import ChainStage
from services.chain.worker.cropping import TritonDetector, UploaderBox
from services.chain.worker.pipeline import (
    STAGE,
    PreparedSighting,
    check_bucket,
    embedded_record,
    local_features,
    parse_event,
    prepare_fetched,
    species_scores,
)
from services.chain.worker.storage import worker_object_reader
from services.core import model_versions as versions
from services.core import topics
from services.core.access.admin_gate import AdminGate
from services.core.imaging import FORMATS_PARAMETER, parse_formats_parameter
from services.core.metrics import EVENTS, TRITON_RETRIES, serve_metrics
from services.core.service_ports import default_port
from services.core.settings import Settings
from services.serving.triton_client.failures import classify

log = logging.getLogger(__name__)
REFUSALS_BEFORE_DEAD_LETTER = 3  # the model refused this one crop (a permanent error) this many times in a row
REGISTRY_REFRESH_S = 3600.0  # re-register the served version this often (its Redis entry has a TTL)
FETCH_THREADS_MAX = 32  # threads decoding and cropping one batch's sightings (at most worker_batch_size)
MODEL_CHECK_S = 5.0  # the timer's look at the ensemble's config (a Triton reload nobody announced)


@dataclass(frozen=True)
class ServedModel:
    """What Triton serves under the ensemble's name: the tag stored with each embedding, the export model ids it
    blends (its `model_ids` parameter), and the parameters it was read from (the cheap change check)."""

    version: str
    model_ids: tuple[str, ...]
    fingerprint: str
    image_formats: frozenset[str] = frozenset()  # what it decodes beyond uploads (`PPM`: the worker's pixels)
    species: tuple[str, ...] = ()  # the SPECIES output's column names (() without a species head)


def _model_ids(fingerprint: str) -> tuple[str, ...]:
    """The ensemble parameter `model_ids` (a JSON list of export model ids); () when absent or unreadable."""
    try:
        ids = json.loads(json.loads(fingerprint).get("model_ids") or "[]")
    except (ValueError, TypeError, AttributeError):
        return ()
    return tuple(str(i) for i in ids) if isinstance(ids, list) else ()


def _image_formats(fingerprint: str) -> frozenset[str]:
    """The ensemble parameter `image_formats` (comma-separated, services.core.imaging.TRANSFER_FORMATS of its build);
    empty for a build made before it (PNG then)."""
    try:
        return parse_formats_parameter(json.loads(fingerprint).get(FORMATS_PARAMETER))
    except (ValueError, TypeError, AttributeError):
        return frozenset()


class _ModelChanged(Exception):
    """Triton serves another ensemble than the one a batch was started with."""


class EmbeddingService:
    """The Triton ensemble through services.serving.triton_client.EmbeddingClient; retries are the worker's (backoff
    without limit), so the client itself does not retry."""

    def __init__(self, settings: Settings):
        from services.serving.triton_client import EmbeddingClient

        self.client = EmbeddingClient.from_settings(settings, retries=0)
        self._served: ServedModel | None = None

    def embed(self, images: list[bytes]):
        """(embeddings (N, D), the ensemble's species probabilities (N, S) or None) of a batch of encoded crops."""
        return self.client.embed_with_species(images)

    def species_names(self) -> list[str]:
        return self.client.species_names()

    def ready(self) -> bool:
        return self.client.ready()

    def forget_model_version(self) -> None:
        """After a Triton outage the served model may have changed: ask again."""
        self._served = None
        self.client.forget_config()

    def fingerprint(self) -> str:
        """The ensemble's config parameters (build_id, model_ids, weights, species...) as one string: one gRPC
        metadata call, answered even while the inference queues are full."""
        try:
            parameters = self.client.model_parameters()
        except Exception as exc:  # noqa: BLE001 - Triton unreachable or the model not loaded: retry later
            raise TransientFailure(f"cannot read the ensemble's config from Triton: {exc}") from None
        return json.dumps(parameters, sort_keys=True)

    def current(self) -> ServedModel | None:
        """The served ensemble as last read (None: never read, or forgotten after a Triton failure)."""
        return self._served

    def served_model(self) -> ServedModel:
        """The served ensemble as last read (no Triton call); read now when it never was or was forgotten."""
        served = self._served
        return served if served is not None else self.check_model()

    def check_model(self) -> ServedModel:
        """Read the ensemble's config parameters (one metadata call) and, when they changed, its version: the
        reload path (start-up, the reload page, the timer, after a Triton failure)."""
        fingerprint = self.fingerprint()
        served = self._served
        if served is not None and served.fingerprint == fingerprint:
            return served
        self.client.forget_config()  # batch size and species names may have changed with the model
        try:
            version = self.client.model_version()
            species = tuple(self.client.species_names())
        except Exception as exc:  # noqa: BLE001 - Triton went away between the two calls
            raise TransientFailure(f"cannot read the model version from Triton: {exc}") from None
        self._served = ServedModel(version, _model_ids(fingerprint), fingerprint, _image_formats(fingerprint),
                                   species)
        if served is not None and served.version != version:
            log.warning("worker: Triton now serves %s (was %s)", version, served.version)
        else:
            log.info("worker: Triton serves %s (models %s)", version, list(self._served.model_ids) or "not listed")
        return self._served

    def model_version(self) -> str:
        """`<model>:<version>[:<build_id>]` of the served ensemble (re-read when its config changes)."""
        return self.served_model().version


class SightingWorker(ChainStage):
    """Handles batches of raw sightings.uploaded events (the agent's body)."""

    stage = STAGE

    def __init__(self, settings: Settings, embedder, redis_client, objects, crop_steps, embedded_topic, dead_topic):
        super().__init__(settings, redis_client, dead_topic)
        self.embedder = embedder
        self.objects = objects  # services.chain.worker.storage.ObjectReader
        self.crop_steps = crop_steps
        self.embedded_topic = embedded_topic
        self._registered: tuple[str, float] = ("", 0.0)  # (model version, when) last registered in Redis
        self.pool = ThreadPoolExecutor(max(1, min(FETCH_THREADS_MAX, settings.worker_batch_size)),
                                       thread_name_prefix="worker-decode")

    async def handle_batch(self, raws: list[bytes]) -> None:
        """The agent's body: never raises (an unexpected exception is retried, then dead-lettered `internal_error`
        event by event: ChainStage.handle_guarded), so Faust never acknowledges an unhandled batch."""
        await self.handle_guarded(list(raws), self._handle_batch)

    async def _handle_batch(self, raws: list[bytes]) -> None:
        events = []
        for raw in raws:
            try:
                events.append(parse_event(raw))
            except PermanentFailure as exc:
                await self.dead_letter(exc, decode_original(raw), "")
        if not events:
            return
        handled = await self.in_thread("check markers", markers.handled_many, self.redis,
                                       [e.sighting_id for e in events])  # one round trip for the batch
        fresh, seen = [], set()
        for event, done in zip(events, handled, strict=True):
            if done or event.sighting_id in seen:  # handled before, or a duplicate event inside one batch
                EVENTS.labels(stage=STAGE, outcome="duplicate").inc()
                if done:
                    log.info("sighting %s: already handled, skipping the duplicate", event.sighting_id)
                continue
            seen.add(event.sighting_id)
            fresh.append(event)
        fetched = await asyncio.gather(*(self._fetch(event) for event in fresh), return_exceptions=True)  # on the loop
        first = await asyncio.to_thread(self._prepare_batch, fresh, fetched)  # one thread hop for the whole batch
        prepared = await asyncio.gather(*(self._after_first_try(event, outcome)  # failures: retried or dead-lettered
                                          for event, outcome in zip(fresh, first, strict=True)),
                                        return_exceptions=True)  # all of them end before an error is raised
        errors = [item for item in prepared if isinstance(item, BaseException)]
        if errors:
            raise errors[0]
        todo = [item for item in prepared if item is not None]
        if todo:
            await self._embed_and_publish(todo)

    async def _fetch(self, event) -> bytes:
        """The event's object, read on the event loop (the GETs of a batch overlap): ObjectReader.fetch_async."""
        check_bucket(event, self.settings)
        with self.timed_step("fetch"):
            return await self.objects.fetch_async(event.bucket, event.key, self.settings.max_upload_bytes)

    def _prepare_batch(self, events, fetched) -> list:
        """The first try of each event's `prepare_fetched` on the decode pool (the decodes of a batch overlap),
        waited for in this thread: the prepared sighting or the exception (of the fetch or of the decode), per
        event."""
        futures = [data if isinstance(data, BaseException) else
                   self.pool.submit(prepare_fetched, event, data, self.settings, self.crop_steps)
                   for event, data in zip(events, fetched, strict=True)]
        outcomes = []
        for future in futures:
            if isinstance(future, BaseException):
                outcomes.append(future)
                continue
            try:
                outcomes.append(future.result())
            except Exception as exc:  # noqa: BLE001 - handled per event by _after_first_try
                outcomes.append(exc)
        return outcomes

    async def _after_first_try(self, event, outcome) -> PreparedSighting | None:
        if isinstance(outcome, PermanentFailure):
            await self.dead_letter(outcome, event.asdict(), event.sighting_id)
            return None
        if isinstance(outcome, TransientFailure):
            log.warning("%s sighting %s: transient failure, retrying: %s", self.stage, event.sighting_id, outcome)
            EVENTS.labels(stage=self.stage, outcome="retry").inc()
            await asyncio.sleep(self.backoff().next_delay())
            return await self._prepare_one(event)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _prepare_one(self, event) -> PreparedSighting | None:
        try:
            return await self.retry(f"sighting {event.sighting_id}", lambda: self._fetch_and_prepare(event))
        except PermanentFailure as exc:
            await self.dead_letter(exc, event.asdict(), event.sighting_id)
            return None

    async def _fetch_and_prepare(self, event) -> PreparedSighting:
        data = await self._fetch(event)
        return await asyncio.get_running_loop().run_in_executor(self.pool, prepare_fetched, event, data,
                                                                self.settings, self.crop_steps)

    async def _embed(self, batch: list[PreparedSighting], served: ServedModel):
        """Embeddings of a batch. Transient Triton failures (overload, timeouts, unavailable, model not loaded)
        are retried with backoff for as long as they last; PermanentFailure when the model refuses the input
        (at once for a batch, which is then split; after REFUSALS_BEFORE_DEAD_LETTER refusals for one crop);
        _ModelChanged when the refusal came from another model than `served` (e.g. outputs that changed)."""
        backoff = self.backoff()
        refused = 0
        while True:
            try:
                with self.timed_step("embed"):  # crops encoded in the format this build reads (PPM or PNG)
                    return await asyncio.to_thread(
                        lambda: self.embedder.embed([p.payload(served.image_formats) for p in batch]))
            except Exception as exc:  # noqa: BLE001 - classified below
                failure = classify(exc)
                if failure.transient:
                    refused = 0
                    if failure.kind != "overloaded":  # the server may have restarted with another model
                        self.embedder.forget_model_version()
                    EVENTS.labels(stage=STAGE, outcome="overloaded" if failure.kind == "overloaded" else "retry").inc()
                else:
                    if await self.in_thread("model check", self.embedder.fingerprint) != served.fingerprint:
                        raise _ModelChanged() from None  # not this input's fault: ask the new model
                    refused += 1
                    if len(batch) > 1 or refused >= REFUSALS_BEFORE_DEAD_LETTER:
                        raise PermanentFailure("embedding_failed", f"the model refuses the input "
                                                                   f"({failure.kind}): {failure.message}") from None
                TRITON_RETRIES.inc()
                delay = backoff.next_delay()
                log.warning("Triton call for %d crops failed (%s, %s), retrying in %.1fs: %s", len(batch),
                            failure.kind, "transient" if failure.transient else f"refusal {refused}", delay,
                            failure.message)
                await asyncio.sleep(delay)

    async def check_model(self) -> ServedModel:
        """The reload path: read the served ensemble again now (and register a new version)."""
        await asyncio.to_thread(self.embedder.check_model)  # one try: TransientFailure while Triton is away
        return await self._served_model()

    async def _served_model(self):
        served = self.embedder.current()  # no Triton call per batch: read on the reload path
        if served is None:
            served = await self.in_thread("model version", self.embedder.served_model)
        version, when = self._registered
        if served.version != version or time.monotonic() - when > REGISTRY_REFRESH_S:
            await self.in_thread("register model version", versions.register, self.redis, served.version,
                                 list(served.model_ids), self.settings.redis_embedding_ttl_s)
            self._registered = (served.version, time.monotonic())
        return served

    async def _embed_and_publish(self, batch: list[PreparedSighting]) -> None:
        while True:
            served = await self._served_model()
            try:
                embeddings, species = await self._embed(batch, served)
            except _ModelChanged:
                log.warning("worker: the ensemble changed (was %s): embedding %d crops with the new one",
                            served.version, len(batch))
                self.embedder.forget_model_version()  # the next _served_model reads the new one
                continue
            except PermanentFailure as exc:
                if len(batch) == 1:
                    await self.dead_letter(exc, batch[0].event.asdict(), batch[0].event.sighting_id)
                    return
                for single in batch:  # isolate the request Triton refuses
                    await self._embed_and_publish([single])
                return
            current = self.embedder.current()  # forgotten (a Triton failure) or read again meanwhile?
            if current is None:
                current = await self.in_thread("model check", self.embedder.check_model)
            if current.fingerprint == served.fingerprint:
                break
            log.warning("worker: the served model was read again during the Triton call (was %s): embedding %d "
                        "crops again", served.version, len(batch))
        model_version = served.version
        names = list(served.species)
        rows = species if species is not None else [None] * len(batch)
        features = [None] * len(batch)
        if self.settings.rerank_local_features:  # the crops' SIFT keypoints for the matcher's re-ranking
            with self.timed_step("local_features"):
                features = await asyncio.to_thread(lambda: [local_features(p) for p in batch])
        records = [embedded_record(p, e, model_version, species_scores(names, s), f)
                   for p, e, s, f in zip(batch, embeddings, rows, features, strict=True)]
        ids = [r.sighting_id for r in records]
        with self.timed_step("publish"):  # the whole batch: produce all, wait for every ack, then mark
            await self.send_many(self.embedded_topic, [(r.sighting_id, r.to_json()) for r in records])
            await self.in_thread("mark embedded", markers.mark_embedded_many, self.redis, ids, model_version,
                                 self.settings.redis_marker_ttl_s)
        EVENTS.labels(stage=STAGE, outcome="embedded").inc(len(records))


def build_worker_app(settings: Settings, web_port: int):
    """The worker's Faust app with its agent (clients are created here; they connect lazily)."""
    app = make_app(settings, STAGE, web_port)
    uploaded = raw_topic(app, topics.SIGHTINGS_UPLOADED)
    embedded = raw_topic(app, topics.SIGHTINGS_EMBEDDED)
    dead = raw_topic(app, topics.DEAD_LETTER)
    crop_steps = [UploaderBox()]
    detector = TritonDetector.if_available(settings.triton_grpc_url, settings.triton_detector_model, settings.triton_timeout_s)
    if detector is not None:
        crop_steps.append(detector)
    worker = SightingWorker(
        settings, EmbeddingService(settings), markers.redis_client(settings.redis_url), worker_object_reader(settings),
        crop_steps, embedded, dead,
    )

    @app.agent(uploaded)
    async def embed_sightings(stream):
        async for raws in stream.take(settings.worker_batch_size, within=settings.worker_batch_wait_s):
            await worker.handle_batch(list(raws))

    async def check_model(level: int = logging.WARNING) -> ServedModel | None:
        try:
            return await worker.check_model()
        except Exception as exc:  # noqa: BLE001 - Triton away: the next batch (or timer) reads it again
            log.log(level, "worker: cannot read the served model now: %s", exc)
            return None

    @app.timer(interval=MODEL_CHECK_S)
    async def look_at_the_model():
        await check_model(logging.DEBUG)

    admin_gate = AdminGate(settings)

    @app.page("/model/reload/")
    class ModelReload(faust.web.View):
        """GET: the served model version as last read; POST (an admin's bearer token): read it from Triton now
        (after a reload of the ensemble, so the next batch is tagged with the new version)."""

        async def get(self, request):
            served = worker.embedder.current()
            return self.json({"model_version": served.version if served else None})

        async def post(self, request):
            refusal = admin_gate.refusal(request.headers.get("Authorization"))
            if refusal is not None:
                return self.json({"error": refusal[1]}, status=refusal[0])
            served = await check_model()
            if served is None:
                return self.json({"error": "Triton did not answer; the worker reads it again at its next batch"},
                                 status=503)
            return self.json({"model_version": served.version, "model_ids": list(served.model_ids)})

    @app.on_before_shutdown.connect
    async def close_s3_pool(app, **kwargs):  # the consumer has stopped: no GET is in flight any more
        await worker.objects.close()

    app.whaleid_worker = worker
    return app


def run_worker(settings: Settings, index: int = 0, web_port: int | None = None, metrics_port: int | None = None) -> int:
    web_port = web_port if web_port is not None else default_port(settings.faust_web_port_base, STAGE, index)
    metrics_port = metrics_port if metrics_port is not None else default_port(settings.metrics_port_base, STAGE, index)
    serve_metrics(metrics_port, settings.metrics_host)
    log.info("worker %d: Kafka %s, Triton %s, web port %d, metrics port %d",
             index, settings.kafka_bootstrap, settings.triton_grpc_url, web_port, metrics_port)
    use_event_loop(settings.event_loop)  # before the app: its loops come from the policy
    run_app(build_worker_app(settings, web_port))
    return 0
