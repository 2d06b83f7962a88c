"""The gateway's Redis client after a Redis restart: the pooled connections Redis closed are found and replaced,
so a burst of requests right after the restart is served, not answered 503 for a stale connection (seen in
`whaleid chaos`: one of 16 parallel sighting creations after `restart_redis`)."""

from __future__ import annotations

import asyncio

from services.chain.gateway.app import REDIS_HEALTH_CHECK_S, gateway_redis
from services.devtools.stack.ports import free_port
from services.devtools.stack.redis import RedisServer


def test_a_burst_after_a_redis_restart_finds_no_stale_connection(tmp_path):
    server = RedisServer(tmp_path / "logs", owner=f"{tmp_path}#redis", port=free_port()).start()
    try:
        server.wait_healthy(30)

        async def burst(client, n: int):
            async def one(i: int):
                async with client.pipeline(transaction=True) as pipe:
                    pipe.set(f"burst:{i}", i).incr("burst:count")
                    return await pipe.execute()
            return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)

        async def scenario():
            client = gateway_redis(server.url)
            try:
                first = await burst(client, 16)  # 16 pooled connections
                assert not [r for r in first if isinstance(r, Exception)]
                server.stop()
                server.start().wait_healthy(30)
                await asyncio.sleep(REDIS_HEALTH_CHECK_S + 0.5)  # the connections sat idle while Redis was away
                return await burst(client, 16)
            finally:
                await client.aclose()

        failures = [r for r in asyncio.run(scenario()) if isinstance(r, Exception)]
        assert not failures, failures
    finally:
        server.stop()

