"""`run_gateway(settings)`: serve the gateway until SIGTERM / SIGINT (aiohttp's run_app handles both)."""

from __future__ import annotations

import logging

from aiohttp import web

from services.chain.gateway.app import build_app
from services.core.metrics import serve_metrics
from services.core.settings import Settings

log = logging.getLogger(__name__)


def run_gateway(settings: Settings) -> int:
    app = build_app(settings)
    if settings.gateway_metrics_port:
        serve_metrics(settings.gateway_metrics_port, settings.metrics_host)
        log.info("gateway metrics on http://%s:%s/metrics", settings.metrics_host, settings.gateway_metrics_port)
    log.info("gateway on http://%s:%s (S3 %s, bucket %s)", settings.gateway_host, settings.gateway_port,
             settings.s3_endpoint or "AWS", settings.sightings_bucket)
    web.run_app(app, host=settings.gateway_host, port=settings.gateway_port, print=None,
                access_log=logging.getLogger("whaleid.gateway.access"), shutdown_timeout=10)
    log.info("gateway stopped")
    return 0
