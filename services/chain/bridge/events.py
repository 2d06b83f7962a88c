"""Parsing of S3 event notifications (the standard S3 event JSON, as SQS delivers it and MinIO publishes it).

One SQS message body is either the `s3:TestEvent` sent when a notification is configured, or
`{"Records": [...]}` with one record per object event. Each record is parsed on its own, so one malformed
record does not hide the good ones beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus


@dataclass(frozen=True)
class ObjectCreated:
    bucket: str
    key: str  # decoded (S3 sends keys URL-encoded, spaces as '+')
    size: int
    etag: str
    sequencer: str
    event_name: str
    event_time: str
    original: dict

    @property
    def dedupe_token(self) -> str:
        """What makes two events the same upload: the ETag (multipart Put + Complete share it), else sequencer."""
        return self.etag or self.sequencer


@dataclass(frozen=True)
class Malformed:
    reason: str  # short machine-readable code
    detail: str
    original: Any  # the record (or the whole body when it is not parseable)


@dataclass(frozen=True)
class Ignored:
    """A well-formed event the bridge has nothing to do for (the test event, deletions)."""

    kind: str  # test_event | not_created


ParsedRecord = ObjectCreated | Malformed | Ignored


def _record(record: Any) -> ParsedRecord:
    if not isinstance(record, dict):
        return Malformed("malformed_record", f"a record must be a JSON object, got {type(record).__name__}", record)
    event_name = record.get("eventName")
    if not isinstance(event_name, str) or not event_name:
        return Malformed("missing_field", "record has no eventName", record)
    if not event_name.removeprefix("s3:").startswith("ObjectCreated:"):
        return Ignored("not_created")
    s3 = record.get("s3")
    bucket = s3.get("bucket", {}).get("name") if isinstance(s3, dict) and isinstance(s3.get("bucket"), dict) else None
    obj = s3.get("object") if isinstance(s3, dict) else None
    if not isinstance(bucket, str) or not bucket:
        return Malformed("missing_field", "record has no s3.bucket.name", record)
    if not isinstance(obj, dict) or not isinstance(obj.get("key"), str) or not obj["key"]:
        return Malformed("missing_field", "record has no s3.object.key", record)
    size = obj.get("size", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return Malformed("bad_field", f"s3.object.size must be a non-negative integer, got {size!r}", record)
    return ObjectCreated(
        bucket=bucket,
        key=unquote_plus(obj["key"]),
        size=size,
        etag=str(obj.get("eTag") or obj.get("etag") or "").strip('"'),
        sequencer=str(obj.get("sequencer") or ""),
        event_name=event_name,
        event_time=str(record.get("eventTime") or ""),
        original=record,
    )


def parse_message(body: str | bytes) -> list[ParsedRecord]:
    """The records of one notification message, each parsed, malformed or ignored."""
    try:
        message = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        return [Malformed("not_json", f"the message is not JSON: {exc}", text)]
    if isinstance(message, dict) and message.get("Event") == "s3:TestEvent":
        return [Ignored("test_event")]
    if not isinstance(message, dict) or not isinstance(message.get("Records"), list) or not message["Records"]:
        return [Malformed("no_records", "the message has no Records list", message)]
    return [_record(record) for record in message["Records"]]
