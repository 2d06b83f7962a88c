"""Parsing of SeaweedFS filer events (`filer_pb.EventNotification`, as the filer publishes them to Kafka).

The filer sends one message per change of its namespace: key = the full path (`/buckets/<bucket>/<key>`), value =
the protobuf `EventNotification` of SeaweedFS's official filer.proto (`seaweedfs_pb/filer_pb2.py`). A create has
only `new_entry`, an update or rename both entries, a delete only `old_entry`. The S3 gateway of SeaweedFS stores
an object `<key>` of bucket `<bucket>` as the file `/buckets/<bucket>/<key>` (keys are not URL-encoded here),
the parts of a multipart upload under `/buckets/<bucket>/.uploads/` (the completed object is then created at its
key, ETag `<md5 of the parts' md5s>-<parts>`), and its own state under `/buckets/.system/`. The S3 ETag is the
entry's extended attribute `Seaweed-X-Amz-ETag`.

Overwrites (measured with weed 4.48): a PUT to an existing key is an *update* event (old and new entry, same
path), not a create. S3 (and moto) report an overwrite as `ObjectCreated:Put` and the bridge then decides by
(key, ETag): new bytes are a new upload, the same bytes a duplicate. To behave the same, an update whose ETag
changed is an `ObjectCreated:Put` here; one with the ETag unchanged (the same bytes again, or a change of tags or
attributes only) is ignored as `unchanged` (what the SQS path would skip as a duplicate). Renames are ignored.

Each event becomes the same `ObjectCreated | Ignored | Malformed` as an S3 event record (`events.py`), so the
bridge decides on both alike.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from services.chain.bridge.events import Ignored, Malformed, ObjectCreated, ParsedRecord
from services.chain.bridge.seaweedfs_pb import filer_pb2

BUCKETS_DIR = "/buckets/"
MULTIPART_DIR = ".uploads"
SYSTEM_DIR = ".system"
ETAG_ATTRIBUTE = "Seaweed-X-Amz-ETag"
MULTIPART_ATTRIBUTE = "X-Seaweedfs-Multipart-Part-Boundaries"


def _event_time(attributes: filer_pb2.FuseAttributes) -> str:
    if not attributes.mtime:
        return ""
    when = dt.datetime.fromtimestamp(attributes.mtime, dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{attributes.mtime_ns // 1_000_000:03d}Z"


def _size(entry: filer_pb2.Entry) -> int:
    chunks = max((chunk.offset + chunk.size for chunk in entry.chunks), default=0)
    return max(entry.attributes.file_size, chunks, len(entry.content))


def _etag(entry: filer_pb2.Entry) -> str:
    raw = entry.extended.get(ETAG_ATTRIBUTE)
    if raw:
        return raw.decode("ascii", errors="replace").strip('"')
    return entry.attributes.md5.hex()


def _describe(event: filer_pb2.EventNotification, where: dict[str, Any]) -> dict[str, Any]:
    """A JSON-able copy of the event for dead letters and `original` (chunk lists left out)."""
    compact = filer_pb2.EventNotification()
    compact.CopyFrom(event)
    for name in ("old_entry", "new_entry"):
        if compact.HasField(name):
            del getattr(compact, name).chunks[:]
    return {"source": "seaweedfs", **where, "event": MessageToDict(compact, preserving_proto_field_name=True)}


def parse_event(key: bytes | str | None, value: bytes, where: dict[str, Any] | None = None) -> ParsedRecord:
    """One filer event: a created S3 object, an event the bridge has nothing to do for, or a malformed one.
    `where` (topic, partition, offset) is kept in `original` for dead letters."""
    where = dict(where or {})
    path_key = key.decode(errors="replace") if isinstance(key, bytes) else (key or "")
    where["path"] = path_key
    try:
        event = filer_pb2.EventNotification.FromString(value or b"")
    except DecodeError as exc:
        raw = base64.b64encode((value or b"")[:4096]).decode()
        return Malformed("not_protobuf", f"the message is not a filer EventNotification: {exc}",
                         {"source": "seaweedfs", **where, "value_base64": raw})
    if not event.HasField("new_entry"):
        return Ignored("not_created")  # a delete (old entry only)
    entry = event.new_entry
    if entry.is_directory:
        return Ignored("directory")
    if not entry.name:
        return Malformed("missing_field", "the created entry has no name", _describe(event, where))
    key_parent = path_key.rsplit("/", 1)[0] if "/" in path_key else ""
    parent = event.new_parent_path or key_parent
    if event.HasField("old_entry"):  # an overwrite (the same path) or a rename (S3 has none: not an upload)
        old = event.old_entry
        if old.name != entry.name or (key_parent and event.new_parent_path and key_parent != event.new_parent_path):
            return Ignored("not_created")
        if _etag(old) == _etag(entry):
            return Ignored("unchanged")  # the same bytes again, or a metadata-only change (tags, attributes)
        # new bytes at the key: an upload, as S3 reports it (ObjectCreated:Put); the bridge's (key, etag) dedupe
        # then treats it exactly as an SQS-delivered overwrite
    path = parent.rstrip("/") + "/" + entry.name
    if not path.startswith(BUCKETS_DIR):
        return Ignored("not_in_bucket")  # a file written through the filer, not through S3
    bucket, _, object_key = path[len(BUCKETS_DIR):].partition("/")
    first = object_key.split("/", 1)[0]
    if bucket == SYSTEM_DIR or first == SYSTEM_DIR:
        return Ignored("system")
    if first == MULTIPART_DIR:
        return Ignored("multipart_part")
    if not bucket or not object_key:
        return Ignored("not_in_bucket")
    etag = _etag(entry)
    multipart = MULTIPART_ATTRIBUTE in entry.extended or "-" in etag
    return ObjectCreated(
        bucket=bucket,
        key=object_key,
        size=_size(entry),
        etag=etag,
        sequencer=f"{entry.attributes.inode:x}.{entry.attributes.mtime:x}",
        event_name="ObjectCreated:CompleteMultipartUpload" if multipart else "ObjectCreated:Put",
        event_time=_event_time(entry.attributes),
        original=_describe(event, where),
    )
