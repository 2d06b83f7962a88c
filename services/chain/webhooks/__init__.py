"""Optional webhooks per app for finished identifications: `whaleid serve webhooks`.

See service.py (the consumer, retries, dead letters), signing.py (HMAC-SHA256 signatures and how a receiver
verifies them) and endpoints.py (which app gets which URL and secret)."""

from services.chain.webhooks.signing import sign, verify

__all__ = ["sign", "verify", "run_webhooks"]


def run_webhooks(settings, metrics_port=None, stop=None) -> int:
    from services.chain.webhooks.service import run_webhooks as run

    return run(settings, metrics_port=metrics_port, stop=stop)
