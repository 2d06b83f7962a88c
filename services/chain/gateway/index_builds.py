"""Redis indexes that a gateway builds once when it starts (the review queue's `review:awaiting`, each individual's
`confirmations:individual:<id>`), in the background: a gateway starts and serves while Redis is away, and the
build is retried until it is done."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)
RETRY_S = 5.0


def build_in_background(app: web.Application, name: str, build: Callable[[], Awaitable[int]]) -> None:
    """Run `build()` (returns how many entries it added) once after start-up, retried every RETRY_S on errors
    until it succeeds or the gateway stops."""
    key = web.AppKey(f"index-build-{name}", asyncio.Task)

    async def run() -> None:
        while True:
            try:
                added = await build()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away or failing: retried, the gateway serves meanwhile
                log.warning("%s: index build failed (%s: %s); retrying in %.0f s", name, type(exc).__name__, exc,
                            RETRY_S)
                await asyncio.sleep(RETRY_S)
                continue
            if added:
                log.info("%s: %d entries created before the index added to it", name, added)
            return

    async def start(_app) -> None:
        app[key] = asyncio.get_running_loop().create_task(run())

    async def stop(_app) -> None:
        task = app.get(key)
        if task is not None and not task.done():
            task.cancel()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
