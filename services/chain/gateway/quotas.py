"""Per-app limits of `POST /v1/sightings`, counted in Redis so that every gateway replica shares them.

    quota:sightings:<app>:minute:<epoch minute>   counter, expires 2 minutes after its window opened
    quota:sightings:<app>:day:<epoch day>         counter, expires 2 days after its (UTC) day opened

One pipelined round trip per request: INCR + EXPIRE of both windows, and SCARD of the encounter the sighting joins
(setting encounter_max_members). Past a window's limit (settings sightings_quota_per_minute / _per_day; 0 = no
limit) the request is answered 429 with `Retry-After` (seconds to the window's end) and a JSON reason; a refused
request is counted too (an app hammering past its quota stays refused until the window ends). Past the encounter's
size: 409 encounter_full. Nothing is created for a refused request.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from aiohttp import web

from services.core.keys import encounter_key, quota_key

WINDOWS = (("minute", 60), ("day", 86400))


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    reason: str
    retry_after_s: int = 0

    def response(self) -> web.Response:
        body = {"error": self.reason, "code": self.code}
        headers = {}
        if self.retry_after_s:
            body["retry_after_s"] = self.retry_after_s
            headers["Retry-After"] = str(self.retry_after_s)
        return web.json_response(body, status=self.status, headers=headers)


async def admit(redis, settings, app: str, encounter: str = "", now: float | None = None) -> Refusal | None:
    """Count one sighting of `app` (and check its encounter); a Refusal when it must not be created."""
    now = time.time() if now is None else now
    limits = {"minute": settings.sightings_quota_per_minute, "day": settings.sightings_quota_per_day}
    active = [(name, span) for name, span in WINDOWS if limits[name] > 0]
    if not active and not encounter:
        return None
    async with redis.pipeline(transaction=False) as pipe:
        for name, span in active:
            window_key = quota_key(app, name, int(now // span))
            pipe.incr(window_key)
            pipe.expire(window_key, 2 * span)
        if encounter:
            pipe.scard(encounter_key(app, encounter))
        answers = await pipe.execute()
    for i, (name, span) in enumerate(active):
        count = int(answers[2 * i])
        if count > limits[name]:
            retry = max(1, math.ceil((int(now // span) + 1) * span - now))
            return Refusal(429, "quota_exceeded",
                           f"app {app!r} has created its {limits[name]} sightings for this {name} "
                           f"(setting sightings_quota_per_{name}); retry in {retry} s", retry)
    if encounter and int(answers[-1]) >= settings.encounter_max_members > 0:
        return Refusal(409, "encounter_full",
                       f"encounter {encounter!r} already has {int(answers[-1])} sightings, the most one encounter "
                       f"may have (setting encounter_max_members); start another encounter id")
    return None
