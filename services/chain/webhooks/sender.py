"""One signed webhook POST under a total deadline.

`Sender.post(endpoint, job)` resolves the host, connects, sends the request and reads the status line and the
headers, every socket operation bounded by what is left of `webhook_deadline_s` (wall clock for the whole attempt:
a receiver that drips its answer one byte at a time ends the attempt at the deadline, `deadline exceeded`), each
also by `webhook_timeout_s`. The response body is not read: the status decides. Redirects are answers, not
followed; header names go out exactly as written.

With `webhook_allow_private` off (the default outside the local profile) an address that is loopback, private,
link-local, multicast, reserved or unspecified is refused before connecting (`private_address`, not retried); the
connection goes to the address that was checked, so DNS cannot switch it in between.
"""

from __future__ import annotations

import email.message
import email.parser
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from services.chain.webhooks.endpoints import Endpoint
from services.chain.webhooks.signing import sign

RETRYABLE_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "whaleid-webhooks/1"
MAX_HEAD_BYTES = 65536  # status line and headers; a longer head is a bad answer


@dataclass(frozen=True)
class Answer:
    ok: bool
    retry: bool
    status: int | None = None
    error: str = ""
    retry_after: float | None = None
    reason: str = ""  # why a delivery that is not retried was refused: "" (the receiver's answer) | private_address


class DeadlineExceeded(OSError):
    """The attempt's total deadline passed (connecting, sending, or waiting for the answer's head)."""


class PrivateAddress(ValueError):
    """The endpoint resolves to an address webhooks may not call (webhook_allow_private off)."""


def is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
            or ip.is_unspecified)


class _Clock:
    def __init__(self, deadline_s: float, timeout_s: float):
        self.end = time.monotonic() + deadline_s
        self.timeout_s = timeout_s

    def left(self) -> float:
        """Seconds the next socket operation may take; DeadlineExceeded when none are left."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("deadline exceeded")
        return min(left, self.timeout_s)


class Sender:
    """One POST per call, bounded by `deadline_s` in all (see the module doc)."""

    def __init__(self, timeout_s: float, deadline_s: float | None = None, allow_private: bool = True):
        self.timeout_s = float(timeout_s)
        self.deadline_s = float(deadline_s) if deadline_s else self.timeout_s
        self.allow_private = allow_private

    @classmethod
    def from_settings(cls, settings) -> "Sender":
        return cls(settings.webhook_timeout_s, settings.webhook_deadline_s, settings.webhook_allow_private)

    def post(self, endpoint: Endpoint, job) -> Answer:
        body = job.body.encode()
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "X-WhaleId-Event": job.event,
                   "X-WhaleId-Delivery": job.delivery_id, "X-WhaleId-Attempt": str(job.attempts),
                   **sign(endpoint.secret, body)}
        clock = _Clock(self.deadline_s, self.timeout_s)
        try:
            status, head = self._exchange(endpoint.url, body, headers, clock)
        except PrivateAddress as exc:
            return Answer(ok=False, retry=False, error=str(exc), reason="private_address")
        except DeadlineExceeded:
            return Answer(ok=False, retry=True, error=f"deadline exceeded ({self.deadline_s:g} s)")
        except (OSError, ValueError) as exc:  # refused, timeout, DNS, TLS, a bad answer
            return Answer(ok=False, retry=True, error=f"{type(exc).__name__}: {exc}")
        if 200 <= status < 300:
            return Answer(ok=True, retry=False, status=status)
        return Answer(ok=False, retry=status >= 500 or status in RETRYABLE_STATUSES, status=status,
                      error=f"HTTP {status}", retry_after=_seconds(head.get("Retry-After")))

    def _exchange(self, url: str, body: bytes, headers: dict, clock: _Clock):
        parts = urlsplit(url)
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        address = self._address(parts.hostname, port)
        sock = socket.create_connection(address[:2], timeout=clock.left())
        try:
            if https:
                sock.settimeout(clock.left())
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
            host = parts.netloc.rsplit("@", 1)[-1]  # as written: [v6]:port, host:port, host
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            lines = [f"POST {target} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}", "Connection: close",
                     *(f"{name}: {value}" for name, value in headers.items())]
            request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
            view = memoryview(request)
            while view:
                sock.settimeout(clock.left())
                sent = sock.send(view)
                view = view[sent:]
            return _read_head(sock, clock)
        except TimeoutError:
            clock.left()  # the deadline's end: DeadlineExceeded; else the per-operation timeout
            raise
        finally:
            sock.close()

    def _address(self, host: str | None, port: int) -> tuple:
        if not host:
            raise ValueError("the webhook URL has no host")
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"{host} does not resolve")
        if not self.allow_private:
            refused = sorted({info[4][0] for info in infos if is_private(info[4][0])})
            if refused:
                raise PrivateAddress(f"{host} resolves to {', '.join(refused)}, a private or loopback address "
                                     "(webhook_allow_private is off)")
        return infos[0][4]


def _read_head(sock: socket.socket, clock: _Clock) -> tuple[int, email.message.Message]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD_BYTES:
            raise ValueError(f"the answer's head is longer than {MAX_HEAD_BYTES} bytes")
        sock.settimeout(clock.left())
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"the receiver closed the connection after {len(buffer)} bytes of its answer")
        buffer += chunk
    head = buffer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status_line, _, rest = head.partition("\r\n")
    version, _, tail = status_line.partition(" ")
    if not version.startswith("HTTP/") or not tail[:3].isdigit():
        raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
    message = email.parser.Parser().parsestr(rest, headersonly=True)
    return int(tail[:3]), message  # .get(name) ignores the case


def _seconds(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None
