"""Reading uploaded objects from S3 with the size and content-type limits of the chain.

One GET per sighting, signed with AWS Signature Version 4 (`sigv4_get_headers`: the credentials of boto3's chain,
the settings' keys, or the environment, profile or instance role, refreshed as boto3 refreshes them) and sent
with aiohttp on the worker's event loop (`ObjectReader.fetch_async`: one connection pool per loop; `fetch` is the
same GET for synchronous callers). Not `boto3.client.get_object`: its endpoint resolution, event hooks, retry
bookkeeping and response parsing cost 1.6 ms of CPU per GET on this machine against 0.6 ms for the signed GET
(`python -m bench chain` measures the worker's whole step), and the worker does one per sighting. Not botocore's
`S3SigV4Auth` either: its request object, header map and the four HMACs deriving the day's key cost 55 us per
GET here; `sigv4_get_headers` writes the same headers (a unit test compares them with botocore's for the same
instant) in 9 us, deriving the signing key once a day. Not urllib3 in a thread pool (the worker's GETs until
2026-12-06): a thread hop per GET and http.client's header parsing (the `email` package) cost 430-480 us of
client CPU per GET against aiohttp's 170-175 (its C parser, on the loop), batches of 16 against a local server.
A GET whose connection fails or whose answer does not come is repeated at once `RETRIES` times (a kept-alive
connection the server closed meanwhile, as boto3 does; aiohttp itself also sends each try again once, at once, when
the server drops its connection); anything longer is the worker's own backoff.
"""
from __future__ import annotations

import asyncio
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
RETRIES = 2  # a GET that fails to connect or to get its answer is repeated at once this many times
ERROR_BODY_BYTES = 4096  # what is read of an error answer for its S3 error code


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

        session = boto3.session.Session(aws_access_key_id=settings.aws_access_key_id or None,
                                        aws_secret_access_key=settings.aws_secret_access_key or None,
                                        region_name=settings.s3_region)
        self.credentials = session.get_credentials()
        self.region = settings.s3_region
        self.endpoint = settings.s3_endpoint.rstrip("/")
        self.connections = connections
        self._keys = SigV4Keys()
        self._session = None  # aiohttp.ClientSession of `_session_loop` (created on the first GET there)
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def url(self, bucket: str, key: str) -> str:
        path = quote(key, safe="/~")
        if self.endpoint:
            return f"{self.endpoint}/{bucket}/{path}"
        return f"https://{bucket}.s3.{self.region}.amazonaws.com/{path}"

    def _signed_headers(self, url: str, frozen) -> dict[str, str]:
        headers = sigv4_get_headers(url, frozen.access_key, frozen.secret_key, frozen.token, self.region, self._keys)
        headers["Accept-Encoding"] = "identity"  # the object's bytes as stored (what http.client asked for)
        return headers

    async def _frozen_credentials(self):
        """The credentials of this instant; a refresh (temporary credentials: a network call) off the loop."""
        if self.credentials is None:
            raise PermanentFailure("unreadable_object", "no S3 credentials (settings aws_access_key_id, or boto3's "
                                                        "environment, profile or instance role)")
        refresh_needed = getattr(self.credentials, "refresh_needed", None)
        if refresh_needed is not None and refresh_needed():
            return await asyncio.to_thread(self.credentials.get_frozen_credentials)
        return self.credentials.get_frozen_credentials()

    def _new_session(self):
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S)
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.connections), timeout=timeout)

    def _loop_session(self):
        """The pool of the running loop (the worker's: its connections are kept alive from GET to GET)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session_loop is not loop or self._session.closed:
            self._session, self._session_loop = self._new_session(), loop
        return self._session

    async def close(self) -> None:
        """Close the running loop's pool (its kept-alive connections)."""
        if self._session is not None and self._session_loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = self._session_loop = None

    def fetch(self, bucket: str, key: str, max_bytes: int) -> bytes:
        """`fetch_async` for a synchronous caller (on a loop and a pool of its own, closed after the GET)."""

        async def fetch_once():
            session = self._new_session()
            try:
                return await self.fetch_async(bucket, key, max_bytes, session)
            finally:
                await session.close()

        return asyncio.run(fetch_once())

    async def fetch_async(self, bucket: str, key: str, max_bytes: int, session=None) -> bytes:
        """The object's bytes (the body is read only after the size and type checks); PermanentFailure for
        missing, unreadable, too large or non-image objects, TransientFailure when S3 cannot answer. On the
        running loop, over its pool (`session`: another aiohttp session)."""
        import aiohttp
        from yarl import URL

        session = session if session is not None else self._loop_session()
        url = self.url(bucket, key)
        where = f"s3://{bucket}/{key}"
        frozen = await self._frozen_credentials()
        for attempt in range(RETRIES + 1):
            try:  # the URL as signed (already quoted: not normalised again)
                response = await session.get(URL(url, encoded=True), headers=self._signed_headers(url, frozen),
                                             allow_redirects=False)
                break
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                if attempt == RETRIES:
                    raise TransientFailure(f"S3 unavailable reading {where}: {exc!r}") from None
        complete = False  # the body was read to its end: the connection can serve the next GET
        try:
            if response.status != 200:
                try:
                    body = await response.content.read(ERROR_BODY_BYTES)
                except Exception:  # noqa: BLE001 - the status alone then
                    body = b""
                raise _status_failure(response.status, where, _error_code(body, response.reason, response.status))
            _check_headers(response.headers.get("Content-Length"), response.headers.get("Content-Type", ""),
                           max_bytes)
            chunks, size = [], 0
            try:
                while size <= max_bytes:
                    chunk = await response.content.read(max_bytes + 1 - size)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise TransientFailure(f"S3 connection lost reading {where}: {exc!r}") from None
            complete = size <= max_bytes
        finally:
            if not complete:  # a refused or unread body: close the connection rather than read what is left
                response.close()
            response.release()
        if size > max_bytes:
            raise PermanentFailure("too_large", f"more than {max_bytes} bytes")
        return b"".join(chunks)


def _status_failure(status: int, where: str, code: str) -> Exception:
    """The failure of an answer other than 200: missing (404) and access denied (403) are permanent."""
    if status == 404:
        return PermanentFailure("missing_object", f"{where} does not exist")
    if status == 403:
        return PermanentFailure("unreadable_object", f"{where}: access denied ({code})")
    return TransientFailure(f"S3 answered {status} reading {where}: {code}")


def _check_headers(content_length: str | None, content_type: str, max_bytes: int) -> None:
    """Refuse an object by its headers, before its body is read: too large, or not an image type."""
    size = int(content_length or 0)
    if size > max_bytes:
        raise PermanentFailure("too_large", f"{size} bytes > limit {max_bytes}")
    content_type = str(content_type or "").split(";")[0].strip().lower()
    if content_type not in ACCEPTED_CONTENT_TYPES:
        raise PermanentFailure("wrong_content_type", f"{content_type!r} is not an image type")


def _error_code(body: bytes, reason: str | None, status: int) -> str:
    """S3's error code from an error body (`<Code>NoSuchBucket</Code>`), else the HTTP reason."""
    text = body.decode("utf-8", "replace")
    start, end = text.find("<Code>"), text.find("</Code>")
    return text[start + 6:end] if 0 <= start < end else (reason or str(status))


def worker_object_reader(settings) -> ObjectReader:
    """The worker's reader, with a connection pool as large as its fetch pool, so the concurrent GETs of a batch
    reuse connections instead of opening new ones."""
    return ObjectReader(settings, connections=max(10, min(64, 2 * int(settings.worker_batch_size))))
