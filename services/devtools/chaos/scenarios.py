"""The faults of `whaleid chaos`, one per scenario: what goes wrong mid-stream, for how long, and how it ends (a
supervisor restarting a killed service, a server coming back)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from services.core.keys import chaos_filler_key
from services.devtools.chaos.environment import ChaosEnvironment
from services.devtools.chaos.malformed import MalformedInjection

Action = Callable[[ChaosEnvironment], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: str  # what happens, in words
    inject: Action
    recover: Action
    hold_s: float = 0.0  # how long the fault lasts before `recover`
    check: Callable[[ChaosEnvironment, float], dict] | None = None  # extra fields of the row, after the settle


def _nothing(env: ChaosEnvironment) -> None:
    return None


def _kill(service: str) -> Scenario:
    return Scenario(
        f"kill_{service}", f"SIGKILL of the {service} mid-stream, restarted at once",
        lambda env: env.kill_service(service), lambda env: env.restart_service(service),
    )


def _server(name: str, fault: str, hold_s: float) -> Scenario:
    return Scenario(
        f"restart_{name}", fault, lambda env: env.stack.stop_server(name),
        lambda env: env.stack.start_server(name), hold_s,
    )


def _s3_down(env: ChaosEnvironment) -> None:
    env.proxy.set_down(True)


def _s3_up(env: ChaosEnvironment) -> None:
    env.proxy.set_down(False)


def _s3_slow(env: ChaosEnvironment) -> None:
    env.proxy.set_delay(0.3)


def _s3_fast(env: ChaosEnvironment) -> None:
    env.proxy.set_delay(0.0)


def _s3_full(env: ChaosEnvironment) -> None:
    env.upload_proxy.set_full(True)


def _s3_space(env: ChaosEnvironment) -> None:
    env.upload_proxy.set_full(False)


class RedisFull:
    """Redis at `maxmemory` with `noeviction` (the deploy's policy): the limit set just above what it uses, then
    filled to it and kept full for the hold (a filler thread takes any space the chain frees), so writes are
    refused with OOM; recovered by deleting the filler (space freed) and restoring the limit. The row tells how
    many writes Redis refused (the filler's; the chain's are refused alike)."""

    BLOCK = 16 * 1024

    def __init__(self):
        self.saved: dict = {}
        self.fillers = self.refused = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _fill(self, client) -> None:
        import redis

        block = b"\0" * self.BLOCK
        while not self._stop.is_set():
            try:
                client.set(chaos_filler_key(self.fillers), block)
                self.fillers += 1
            except redis.exceptions.OutOfMemoryError:
                self.refused += 1
                self._stop.wait(0.02)
            except redis.exceptions.RedisError:
                self._stop.wait(0.1)

    def inject(self, env: ChaosEnvironment) -> None:
        client = env.redis
        self.saved = {**client.config_get("maxmemory"), **client.config_get("maxmemory-policy")}
        self.fillers = self.refused = 0
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + (1 << 20))
        self._stop.clear()
        self._thread = threading.Thread(target=self._fill, args=(client,), name="chaos-redis-filler", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.refused and time.monotonic() < deadline:
            time.sleep(0.01)
        env.progress(f"redis_maxmemory: maxmemory {client.config_get('maxmemory')['maxmemory']} bytes reached "
                     f"({self.fillers} filler blocks); writes are refused")

    def recover(self, env: ChaosEnvironment) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        client = env.redis
        for first in range(0, self.fillers, 1000):
            client.delete(*(chaos_filler_key(n) for n in range(first, min(self.fillers, first + 1000))))
        for key, value in self.saved.items():
            client.config_set(key, value)

    def check(self, env: ChaosEnvironment, timeout_s: float) -> dict:
        return {"redis_writes_refused": self.refused,
                "problems": [] if self.refused else ["Redis never refused a write: maxmemory was not reached"]}


def _s3_full_check(env: ChaosEnvironment, timeout_s: float) -> dict:
    refused = env.upload_proxy.refused_writes
    return {"s3_writes_refused": refused,
            "problems": [] if refused else ["no upload met the full volume (the fault did not happen)"]}


def _swap_gallery(env: ChaosEnvironment) -> None:
    env.publish_gallery(env.individuals + 5)


_redis_full = RedisFull()
_malformed = MalformedInjection()

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    _kill("worker"),
    _kill("matcher"),
    _kill("bridge"),
    _kill("gateway"),
    _kill("reconciler"),
    _server("triton", "Triton stopped for 5 s, then started again", 5.0),
    _server("redis", "Redis stopped for 2 s (append-only file on), then started again", 2.0),
    _server("kafka", "the Kafka broker stopped for 2 s and started again empty (the embedded broker keeps its "
                     "data in memory: the reconciler must recover what was lost)", 2.0),
    Scenario("s3_unavailable", "S3 unreachable for the worker and the reconciler for 8 s", _s3_down, _s3_up, 8.0),
    Scenario("s3_slow", "every S3 read of the worker and the reconciler 0.3 s slower for 8 s", _s3_slow, _s3_fast,
             8.0),
    Scenario("gallery_swap", "a new gallery version published mid-stream (the matcher hot-swaps)", _swap_gallery,
             _nothing),
    Scenario("redis_maxmemory", "Redis at maxmemory (noeviction) for 5 s: every write refused (OOM), then the "
                                "space freed", _redis_full.inject, _redis_full.recover, 5.0, _redis_full.check),
    Scenario("s3_full", "a full S3 volume for 8 s: every upload refused 507 InsufficientStorage, then space again",
             _s3_full, _s3_space, 8.0, _s3_full_check),
    Scenario("malformed_record", f"{_malformed.per_kind * 3} malformed records written straight into "
                                 "sightings.embedded (random bytes, cut-off JSON, an unknown record_version): each "
                                 "dead-lettered with a reason", _malformed.inject, _nothing, 0.0, _malformed.check),
)}

HOSTILE = "hostile_input"
MEMORY_BOMB = "memory_bomb"  # services/devtools/chaos/memory_bomb.py
WEBHOOK_SLOW = "webhook_slow"  # services/devtools/chaos/webhook_drip.py
FAST = ("kill_worker", "kill_matcher", "restart_kafka", HOSTILE)  # the subset `make test` runs
ALL = (*SCENARIOS, WEBHOOK_SLOW, MEMORY_BOMB, HOSTILE)
