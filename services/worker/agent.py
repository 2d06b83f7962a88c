"""The worker's Faust agent: sightings.uploaded -> (S3, validate, crop, Triton) -> sightings.embedded.

Batches: the agent takes what is waiting (up to `worker_batch_size`, `worker_batch_wait_s`) so one Triton call
embeds several crops. Permanent failures go to sightings.dead-letter and Redis `failure:<id>`; transient ones
(S3, Triton, Redis, Kafka unavailable) are retried with backoff inside the agent, so the offset does not move
past an event before it is handled: nothing is lost. Duplicates (re-delivery after a crash, duplicate events)
are skipped by the Redis markers.
"""

from __future__ import annotations

import asyncio
import logging

from services import topics
from services.metrics import EVENTS, TRITON_RETRIES, serve_metrics
from services.operations.model_store import s3_client
from services.settings import Settings
from services.worker import markers
from services.worker.cropping import TritonDetector, UploaderBox
from services.worker.failures import PermanentFailure, TransientFailure
from services.worker.faust_app import decode_original, default_port, make_app, raw_topic, run_app
from services.worker.pipeline import (
    STAGE,
    PreparedSighting,
    embedded_record,
    parse_event,
    prepare,
    species_scores,
)
from services.worker.stage import ChainStage

log = logging.getLogger(__name__)
FAILURES_WHILE_READY = 3  # Triton answers "ready" yet refuses this request: after this many, it is the request


class EmbeddingService:
    """The Triton ensemble through services.triton_client.EmbeddingClient; retries are the worker's (backoff
    without limit), so the client itself does not retry."""

    def __init__(self, settings: Settings):
        from services.triton_client import EmbeddingClient

        self.client = EmbeddingClient.from_settings(settings, retries=0)
        self._model_version = ""

    def embed(self, pngs: list[bytes]):
        """(embeddings (N, D), the ensemble's species probabilities (N, S) or None) of a batch of crops."""
        return self.client.embed_with_species(pngs)

    def species_names(self) -> list[str]:
        return self.client.species_names()

    def ready(self) -> bool:
        return self.client.ready()

    def forget_model_version(self) -> None:
        """After a Triton outage the served model may have changed: ask again."""
        self._model_version = ""
        self.client.forget_config()

    def model_version(self) -> str:
        """`<model>:<version>[:<build_id>]` of the served ensemble (asked once, then cached)."""
        if not self._model_version:
            try:
                self._model_version = self.client.model_version()
            except Exception as exc:  # noqa: BLE001 - Triton went away between the embed and this call
                raise TransientFailure(f"cannot read the model version from Triton: {exc}") from None
        return self._model_version


class SightingWorker(ChainStage):
    """Handles batches of raw sightings.uploaded events (the agent's body)."""

    stage = STAGE

    def __init__(self, settings: Settings, embedder, redis_client, s3, crop_steps, embedded_topic, dead_topic):
        super().__init__(settings, redis_client, dead_topic)
        self.embedder = embedder
        self.s3 = s3
        self.crop_steps = crop_steps
        self.embedded_topic = embedded_topic

    async def handle_batch(self, raws: list[bytes]) -> None:
        prepared = await asyncio.gather(*(self._prepare_one(raw) for raw in raws))
        todo, seen = [], set()
        for item in prepared:
            if item is None:
                continue
            if item.event.sighting_id in seen:  # a duplicate event inside one batch
                EVENTS.labels(stage=STAGE, outcome="duplicate").inc()
                continue
            seen.add(item.event.sighting_id)
            todo.append(item)
        if todo:
            await self._embed_and_publish(todo)

    async def _prepare_one(self, raw: bytes) -> PreparedSighting | None:
        try:
            event = parse_event(raw)
        except PermanentFailure as exc:
            await self.dead_letter(exc, decode_original(raw), "")
            return None
        if await self.in_thread("check markers", markers.already_handled, self.redis, event.sighting_id):
            EVENTS.labels(stage=STAGE, outcome="duplicate").inc()
            log.info("sighting %s: already handled, skipping the duplicate", event.sighting_id)
            return None
        try:
            return await self.in_thread(
                f"sighting {event.sighting_id}", prepare, event, self.s3, self.settings, self.crop_steps,
            )
        except PermanentFailure as exc:
            await self.dead_letter(exc, event.asdict(), event.sighting_id)
            return None

    async def _embed(self, batch: list[PreparedSighting]):
        """Embeddings of a batch; retried while Triton is down; PermanentFailure when it refuses while ready."""
        backoff = self.backoff()
        refused = 0
        while True:
            try:
                with self.timed_step("embed"):
                    return await asyncio.to_thread(self.embedder.embed, [p.png for p in batch])
            except Exception as exc:  # noqa: BLE001 - classified by Triton's health below
                self.embedder.forget_model_version()
                ready = await asyncio.to_thread(self.embedder.ready)
                refused = refused + 1 if ready else 0
                if refused >= FAILURES_WHILE_READY:
                    raise PermanentFailure("embedding_failed", f"Triton is ready but refuses the request: {exc}") from None
                TRITON_RETRIES.inc()
                delay = backoff.next_delay()
                log.warning("Triton call for %d crops failed (ready=%s), retrying in %.1fs: %s", len(batch), ready, delay, exc)
                await asyncio.sleep(delay)

    async def _embed_and_publish(self, batch: list[PreparedSighting]) -> None:
        try:
            embeddings, species = await self._embed(batch)
        except PermanentFailure as exc:
            if len(batch) == 1:
                await self.dead_letter(exc, batch[0].event.asdict(), batch[0].event.sighting_id)
                return
            for single in batch:  # isolate the request Triton refuses
                await self._embed_and_publish([single])
            return
        model_version = await self.in_thread("model version", self.embedder.model_version)
        names = await self.in_thread("species names", self.embedder.species_names)
        rows = species if species is not None else [None] * len(batch)
        records = [embedded_record(p, e, model_version, species_scores(names, s))
                   for p, e, s in zip(batch, embeddings, rows, strict=True)]
        ids = [r.sighting_id for r in records]
        with self.timed_step("publish"):  # the whole batch: produce all, wait for every ack, then mark
            await asyncio.gather(*(self.send(self.embedded_topic, r.sighting_id, r) for r in records))
            await self.in_thread("mark embedded", markers.mark_embedded_many, self.redis, ids, model_version)
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
        settings, EmbeddingService(settings), markers.redis_client(settings.redis_url), s3_client(settings),
        crop_steps, embedded, dead,
    )

    @app.agent(uploaded)
    async def embed_sightings(stream):
        async for raws in stream.take(settings.worker_batch_size, within=settings.worker_batch_wait_s):
            await worker.handle_batch(list(raws))

    app.whaleid_worker = worker
    return app


def run_worker(settings: Settings, index: int = 0, web_port: int | None = None, metrics_port: int | None = None) -> int:
    web_port = web_port if web_port is not None else default_port(settings.faust_web_port_base, STAGE, index)
    metrics_port = metrics_port if metrics_port is not None else default_port(settings.metrics_port_base, STAGE, index)
    serve_metrics(metrics_port, settings.metrics_host)
    log.info("worker %d: Kafka %s, Triton %s, web port %d, metrics port %d",
             index, settings.kafka_bootstrap, settings.triton_grpc_url, web_port, metrics_port)
    run_app(build_worker_app(settings, web_port))
    return 0
