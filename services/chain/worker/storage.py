"""Reading uploaded objects from S3 with the size and content-type limits of the chain.

One GET per sighting, signed with AWS Signature Version 4 (`sigv4_get_headers`: the credentials of boto3's chain,
the settings' keys, or the environment, profile or instance role, refreshed as boto3 refreshes them) and sent
over one urllib3 connection pool. Not `boto3.client.get_object`: its endpoint resolution, event hooks, retry
bookkeeping and response parsing cost 1.6 ms of CPU per GET on this machine against 0.6 ms for the signed GET
(`python -m bench chain` measures the worker's whole step), and the worker does one per sighting. Not botocore's
`S3SigV4Auth` either: its request object, header map and the four HMACs deriving the day's key cost 55 us per
GET here; `sigv4_get_headers` writes the same headers (a unit test compares them with botocore's for the same
instant) in 9 us, deriving the signing key once a day. Retries are the worker's own (backoff without limit on
transient failures), so the pool does not retry.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote, urlsplit

from services.chain.failures import PermanentFailure, TransientFailure

# Content types an app may declare for a photo; generic binary types are accepted and decided by decoding.
ACCEPTED_CONTENT_TYPES = frozenset(
    {"image/jpeg", "image/jpg", "image/png", "image/webp", "application/octet-stream", "binary/octet-stream", ""}
)
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 5.0, 30.0
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # a GET's payload hash (S3 signs it: there is no body)
DEFAULT_PORTS = {"http": 80, "https": 443}


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


class SigV4Keys:
    """The day's SigV4 signing key per (secret, date, region, service), derived once (four HMACs) and kept."""

    def __init__(self):
        self._cached: tuple[tuple[str, str, str, str], bytes] | None = None

    def key(self, secret: str, date: str, region: str, service: str) -> bytes:
        wanted = (secret, date, region, service)
        if self._cached is None or self._cached[0] != wanted:
            derived = _hmac(("AWS4" + secret).encode("utf-8"), date)
            for part in (region, service, "aws4_request"):
                derived = _hmac(derived, part)
            self._cached = (wanted, derived)
        return self._cached[1]


def sigv4_get_headers(url: str, access_key: str, secret_key: str, token: str | None, region: str,
                      keys: SigV4Keys, now: float | None = None, service: str = "s3") -> dict[str, str]:
    """The headers of a SigV4-signed GET of `url` (no query string, no body), as botocore's S3SigV4Auth writes
    them: X-Amz-Date, X-Amz-Content-SHA256 (the empty payload's hash), X-Amz-Security-Token with temporary
    credentials, Authorization over host (its port unless the scheme's default), those headers and the path as
    given (S3 paths are not normalised)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    date = stamp[:8]
    signed = {"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": stamp}
    if token:
        signed["x-amz-security-token"] = token
    names = sorted(signed)
    canonical = "\n".join(["GET", parts.path or "/", parts.query,
                           "".join(f"{name}:{' '.join(signed[name].split())}\n" for name in names),
                           ";".join(names), EMPTY_SHA256])
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
    signature = hmac.new(keys.key(secret_key, date, region, service), to_sign.encode("utf-8"),
                         hashlib.sha256).hexdigest()
    headers = {"X-Amz-Date": stamp, "X-Amz-Content-SHA256": EMPTY_SHA256}
    if token:
        headers["X-Amz-Security-Token"] = token
    headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                                f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return headers


class ObjectReader:
    """Signed GETs of one S3 endpoint (`settings.s3_endpoint`, path-style; empty: AWS, virtual-hosted style)."""

    def __init__(self, settings, connections: int = 10):
        import boto3
        import urllib3

        session = boto3.session.Session(aws_access_key_id=settings.aws_access_key_id or None,
                                        aws_secret_access_key=settings.aws_secret_access_key or None,
                                        region_name=settings.s3_region)
        self.credentials = session.get_credentials()
        self.region = settings.s3_region
        self.endpoint = settings.s3_endpoint.rstrip("/")
        self._keys = SigV4Keys()
        # a GET may be repeated: a kept-alive connection that the server closed meanwhile is retried at once, on a
        # new connection (as boto3 does); anything longer is the worker's backoff
        retries = urllib3.Retry(total=2, connect=2, read=2, redirect=0, status=0, other=0, backoff_factor=0)
        self.pool = urllib3.PoolManager(num_pools=4, maxsize=connections, retries=retries, block=False,
                                        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S))

    def url(self, bucket: str, key: str) -> str:
        path = quote(key, safe="/~")
        if self.endpoint:
            return f"{self.endpoint}/{bucket}/{path}"
        return f"https://{bucket}.s3.{self.region}.amazonaws.com/{path}"

    def _signed_headers(self, url: str) -> dict[str, str]:
        if self.credentials is None:
            raise PermanentFailure("unreadable_object", "no S3 credentials (settings aws_access_key_id, or boto3's "
                                                        "environment, profile or instance role)")
        frozen = self.credentials.get_frozen_credentials()  # refreshed by boto3 when temporary
        return sigv4_get_headers(url, frozen.access_key, frozen.secret_key, frozen.token, self.region, self._keys)

    def fetch(self, bucket: str, key: str, max_bytes: int) -> bytes:
        """The object's bytes (the body is read only after the size and type checks); PermanentFailure for
        missing, unreadable, too large or non-image objects, TransientFailure when S3 cannot answer."""
        import urllib3

        url = self.url(bucket, key)
        where = f"s3://{bucket}/{key}"
        try:
            response = self.pool.request("GET", url, headers=self._signed_headers(url), preload_content=False,
                                         redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            raise TransientFailure(f"S3 unavailable reading {where}: {exc}") from None
        complete = False  # the body was read to its end: the connection can serve the next GET
        try:
            if response.status == 404:
                raise PermanentFailure("missing_object", f"{where} does not exist")
            if response.status == 403:
                raise PermanentFailure("unreadable_object", f"{where}: access denied ({_error_code(response)})")
            if response.status != 200:
                raise TransientFailure(f"S3 answered {response.status} reading {where}: {_error_code(response)}")
            size = int(response.headers.get("Content-Length") or 0)
            if size > max_bytes:
                raise PermanentFailure("too_large", f"{size} bytes > limit {max_bytes}")
            content_type = str(response.headers.get("Content-Type", "")).split(";")[0].strip().lower()
            if content_type not in ACCEPTED_CONTENT_TYPES:
                raise PermanentFailure("wrong_content_type", f"{content_type!r} is not an image type")
            try:
                data = response.read(max_bytes + 1)
            except urllib3.exceptions.HTTPError as exc:
                raise TransientFailure(f"S3 connection lost reading {where}: {exc}") from None
            complete = len(data) <= max_bytes
        finally:
            if not complete:  # a refused or unread body: close the connection rather than read what is left
                response.close()
            response.release_conn()
        if len(data) > max_bytes:
            raise PermanentFailure("too_large", f"more than {max_bytes} bytes")
        return data


def _error_code(response) -> str:
    """S3's error code from an error body (`<Code>NoSuchBucket</Code>`), else the HTTP reason."""
    try:
        body = response.read(4096).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the status alone then
        body = ""
    start, end = body.find("<Code>"), body.find("</Code>")
    return body[start + 6:end] if 0 <= start < end else (response.reason or str(response.status))


def worker_object_reader(settings) -> ObjectReader:
    """The worker's reader, with a connection pool as large as its fetch pool, so the concurrent GETs of a batch
    reuse connections instead of opening new ones."""
    return ObjectReader(settings, connections=max(10, min(64, 2 * int(settings.worker_batch_size))))
