"""Reading uploaded objects from S3 with the size and content-type limits of the chain."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from services.chain.failures import PermanentFailure, TransientFailure

# Content types an app may declare for a photo; generic binary types are accepted and decided by decoding.
ACCEPTED_CONTENT_TYPES = frozenset(
    {"image/jpeg", "image/jpg", "image/png", "image/webp", "application/octet-stream", "binary/octet-stream", ""}
)
MISSING_CODES = frozenset({"NoSuchKey", "404", "NoSuchBucket", "NotFound"})


def _classify(exc: Exception, bucket: str, key: str) -> Exception:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in MISSING_CODES or status == 404:
            return PermanentFailure("missing_object", f"s3://{bucket}/{key} does not exist")
        if status in (403,) or code in ("AccessDenied", "InvalidObjectState"):
            return PermanentFailure("unreadable_object", f"s3://{bucket}/{key}: {code}")
    if isinstance(exc, (ClientError, BotoCoreError, OSError)):
        return TransientFailure(f"S3 unavailable reading s3://{bucket}/{key}: {exc}")
    return exc


def worker_s3_client(settings):
    """The worker's S3 client: the model store's (same endpoint and credentials) with a connection pool as large
    as the fetch pool, so the concurrent GETs of a batch reuse connections instead of opening new ones."""
    from botocore.config import Config

    from services.operations.model_store import s3_client

    connections = max(10, min(64, 2 * int(settings.worker_batch_size)))
    return s3_client(settings, Config(retries={"max_attempts": 3, "mode": "standard"},
                                      max_pool_connections=connections, tcp_keepalive=True))


def fetch_object(client, bucket: str, key: str, max_bytes: int) -> bytes:
    """The object's bytes (one GET; the body is read only after the size and type checks); PermanentFailure for
    missing, too large or non-image content types."""
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except Exception as exc:  # noqa: BLE001 - classified below
        raise _classify(exc, bucket, key) from None
    body = response["Body"]
    try:
        size = int(response.get("ContentLength", 0))
        if size > max_bytes:
            raise PermanentFailure("too_large", f"{size} bytes > limit {max_bytes}")
        content_type = str(response.get("ContentType", "")).split(";")[0].strip().lower()
        if content_type not in ACCEPTED_CONTENT_TYPES:
            raise PermanentFailure("wrong_content_type", f"{content_type!r} is not an image type")
        try:
            data = body.read(max_bytes + 1)
        except Exception as exc:  # noqa: BLE001
            raise _classify(exc, bucket, key) from None
    finally:
        body.close()
    if len(data) > max_bytes:
        raise PermanentFailure("too_large", f"more than {max_bytes} bytes")
    return data
