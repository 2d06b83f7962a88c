"""Step 1 of a pass: accepted uploads that are stuck (neither identified nor failed nor parked).

For each `sighting:<id>` without `identification:`, `failure:` or a place in the matcher's park, whose age (since
its upload, or its last re-drive) exceeds `reconciler_stale_after_s`:
- the photo is in S3: re-driven (the `embedded:` marker dropped, a new `sightings.uploaded` record, then
  `redriven_at` / `redrives` in the hash), at most `reconciler_max_redrives` times; then dead-lettered
  `unresolved`. Nothing is re-driven or given up while a consumer group of the chain has a backlog (the
  sighting may just be queued): it is `deferred`.
- the upload was recorded but the photo is gone: dead-lettered `object_missing`.
- never uploaded (no photo yet): left alone, counted `awaiting_upload` (not looked up in S3 any more once its
  upload URL expired long ago).

The sightings come from the index `sightings:open` (services.chain.sighting_records: the gateway adds each sighting it
creates, the bridge each upload), read in chunks of SCAN_COUNT: a pass costs what is open, never a scan of every
key. A sighting leaves the index here once it is identified or failed, once its hash is gone (expired), or once
its upload URL expired long ago with no photo (a late upload event puts it back).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from botocore.exceptions import BotoCoreError, ClientError

from services.chain.failures import TransientFailure
from services.chain.markers import record_failure
from services.chain.reconciler.findings import Findings, read_index
from services.chain.sighting_records import decode_hash, sighting_metadata
from services.core import topics
from services.core.keys import (
    OPEN_SIGHTINGS_KEY,
    PARKED_INDEX,
    embedded_key,
    failure_key,
    identification_key,
    sighting_key,
)
from services.core.metrics import DEAD_LETTERS
from services.core.settings import Settings

log = logging.getLogger(__name__)

STAGE = "reconciler"
REDRIVE_EVENT = "whaleid:Redrive"
SCAN_COUNT = 500
MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def _float(value) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


class StaleUploads:
    def __init__(self, settings: Settings, redis, s3, produce: Callable[[list], list], topic_names,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.redis = redis
        self.s3 = s3
        self.produce = produce
        self.topics = topic_names
        self.clock = clock

    def run(self, findings: Findings) -> None:
        ttl_s = self.settings.redis_sighting_ttl_s
        if ttl_s:  # their hashes expired with them
            self.redis.zremrangebyscore(OPEN_SIGHTINGS_KEY, "-inf", f"({self.clock() - ttl_s}")
        read_index(self.redis, OPEN_SIGHTINGS_KEY, lambda ids: self._batch(ids, findings), SCAN_COUNT)

    def _batch(self, ids: list[str], findings: Findings) -> int:
        """Examine the open sightings among `ids`; returns how many left the index."""
        with self.redis.pipeline(transaction=False) as pipe:
            for sighting_id in ids:
                pipe.exists(identification_key(sighting_id), failure_key(sighting_id))
                pipe.zscore(PARKED_INDEX, sighting_id)
                pipe.hgetall(sighting_key(sighting_id))
            answers = pipe.execute()
        closed = []
        for i, sighting_id in enumerate(ids):
            resolved, parked, raw = answers[3 * i: 3 * i + 3]
            if resolved or not raw:  # identified or failed, or its hash expired
                closed.append(sighting_id)
                continue
            findings.add("sightings")
            if parked is None and self._examine(sighting_id, decode_hash(raw), findings) == "closed":
                closed.append(sighting_id)
        if closed:
            self.redis.zrem(OPEN_SIGHTINGS_KEY, *closed)
        return len(closed)

    def _examine(self, sighting_id: str, record: dict[str, str], findings: Findings) -> str | None:
        """What one open sighting needs; "closed" when it can leave the index (nothing can change it any more)."""
        now = self.clock()
        stale = self.settings.reconciler_stale_after_s
        uploaded_at = _float(record.get("uploaded_at"))
        created_at = _float(record.get("created_at"))
        redriven_at = _float(record.get("redriven_at"))
        key = record.get("key", "")
        bucket = record.get("bucket") or self.settings.sightings_bucket
        if not key:
            log.warning("reconciler: sighting %s has no S3 key in its hash: skipped", sighting_id)
            findings.add("errors", sighting_id)
            return
        if uploaded_at and now - max(uploaded_at, redriven_at) <= stale:
            findings.add("pending", sighting_id)
            return
        if not uploaded_at and created_at and now - created_at > self.settings.upload_url_expires_s + 2 * stale:
            findings.add("awaiting_upload", sighting_id)  # its upload URL expired long ago: no photo can come
            return "closed"
        head = self._head(bucket, key)
        if head is None:
            if uploaded_at:
                self._dead_letter(sighting_id, record, "object_missing",
                                  f"s3://{bucket}/{key} was uploaded at {uploaded_at:.0f} and is gone", findings)
            else:
                findings.add("awaiting_upload", sighting_id)
            return
        if not uploaded_at:  # the photo is there but its upload event never reached the chain
            modified = head["LastModified"].timestamp() if head.get("LastModified") else created_at
            if now - max(modified, created_at, redriven_at) <= stale:
                findings.add("pending", sighting_id)
                return
        behind = findings.backlog()
        if behind:
            findings.add("deferred", sighting_id)
            log.debug("reconciler: sighting %s stale but %s: deferred", sighting_id, behind)
            return
        redrives = int(_float(record.get("redrives")))
        if redrives >= self.settings.reconciler_max_redrives:
            if self._resolved(sighting_id):
                return
            age = now - (uploaded_at or created_at)
            self._dead_letter(sighting_id, record, "unresolved",
                              f"no identification or failure after {redrives} re-drive(s), {age:.0f} s after the "
                              f"upload", findings)
            return
        self._redrive(sighting_id, record, bucket, key, head, uploaded_at, now, findings)

    def _head(self, bucket: str, key: str) -> dict | None:
        """The object's HEAD, None when it does not exist; TransientFailure when S3 cannot answer."""
        try:
            return self.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in MISSING_CODES or status == 404:
                return None
            raise TransientFailure(f"S3 HEAD s3://{bucket}/{key}: {code or status}") from None
        except (BotoCoreError, OSError) as exc:
            raise TransientFailure(f"S3 unavailable for HEAD s3://{bucket}/{key}: {exc}") from None

    def _resolved(self, sighting_id: str) -> bool:
        """Identified or failed meanwhile (checked again right before giving up)."""
        return bool(self.redis.exists(identification_key(sighting_id), failure_key(sighting_id)))

    def _redrive(self, sighting_id: str, record: dict, bucket: str, key: str, head: dict, uploaded_at: float,
                 now: float, findings: Findings) -> None:
        try:
            metadata = sighting_metadata(record)
        except ValueError as exc:
            self._dead_letter(sighting_id, record, "bad_metadata", f"{sighting_key(sighting_id)} metadata is not JSON: "
                                                                   f"{exc}", findings)
            return
        event = topics.SightingUploaded(
            sighting_id=sighting_id, bucket=bucket, key=key, size=int(head.get("ContentLength", 0)),
            event_name=REDRIVE_EVENT, event_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            metadata=metadata, uploaded_at=uploaded_at or now,
        )
        # the worker skips a sighting it embedded before; that embedding was lost on the way to a result
        self.redis.delete(embedded_key(sighting_id))
        self.produce([(self.topics.uploaded, sighting_id, event.to_json())])
        sighting = sighting_key(sighting_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(sighting, "redriven_at", now)
            pipe.hincrby(sighting, "redrives", 1)
            if not uploaded_at:  # what the bridge would have recorded
                pipe.hsetnx(sighting, "uploaded_at", now)
                pipe.hsetnx(sighting, "size", int(head.get("ContentLength", 0)))
                pipe.hsetnx(sighting, "etag", str(head.get("ETag", "")).strip('"'))
            pipe.execute()
        findings.add("redriven", sighting_id)
        log.info("reconciler: sighting %s re-driven (%d of %d)", sighting_id, int(_float(record.get("redrives"))) + 1,
                 self.settings.reconciler_max_redrives)

    def _dead_letter(self, sighting_id: str, record: dict, reason: str, detail: str, findings: Findings) -> None:
        now = self.clock()
        original = {"sighting_id": sighting_id, "bucket": record.get("bucket", ""), "key": record.get("key", ""),
                    "uploaded_at": _float(record.get("uploaded_at")), "redrives": int(_float(record.get("redrives")))}
        letter = topics.DeadLetter(stage=STAGE, reason=reason, original=original, sighting_id=sighting_id,
                                   failed_at=now, detail=detail)
        self.produce([(self.topics.dead_letter, sighting_id, letter.to_json())])
        record_failure(self.redis, sighting_id, STAGE, reason, detail, now, self.settings.redis_marker_ttl_s)
        DEAD_LETTERS.labels(stage=STAGE, reason=reason).inc()
        if reason in findings.counts:
            findings.add(reason, sighting_id)
        else:
            findings.add("errors", sighting_id)
        log.warning("reconciler: sighting %s dead-lettered (%s): %s", sighting_id, reason, detail)
