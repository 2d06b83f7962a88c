"""Webhook signatures: HMAC-SHA256 of `<timestamp>.<body>` with the app's secret.

Every call carries
    X-WhaleId-Timestamp: <unix seconds when this attempt was signed>
    X-WhaleId-Signature: sha256=<lowercase hex of HMAC-SHA256(secret, timestamp + "." + raw body)>
A receiver recomputes the HMAC over the raw body bytes it received, compares in constant time, and refuses a
timestamp older than a few minutes (a replayed call): `verify(secret, body, timestamp, signature)` does both.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SCHEME = "sha256"
TOLERANCE_S = 300.0


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"{SCHEME}={digest}"


def sign(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The X-WhaleId-Timestamp and X-WhaleId-Signature headers of `body`."""
    timestamp = str(int(time.time() if now is None else now))
    return {"X-WhaleId-Timestamp": timestamp, "X-WhaleId-Signature": signature(secret, timestamp, body)}


def verify(secret: str, body: bytes, timestamp: str, given: str, tolerance_s: float = TOLERANCE_S,
           now: float | None = None) -> bool:
    """True when `given` is the signature of `body` at `timestamp` and the timestamp is within `tolerance_s`."""
    try:
        moment = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - moment) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, str(moment), body), str(given or ""))
