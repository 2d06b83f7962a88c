"""The faults of `whaleid chaos`, one per scenario: what goes wrong mid-stream, for how long, and how it ends (a
supervisor restarting a killed service, a server coming back)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from services.chaos.environment import ChaosEnvironment

Action = Callable[[ChaosEnvironment], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: str  # what happens, in words
    inject: Action
    recover: Action
    hold_s: float = 0.0  # how long the fault lasts before `recover`


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


def _swap_gallery(env: ChaosEnvironment) -> None:
    env.publish_gallery(env.individuals + 5)


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
)}

HOSTILE = "hostile_input"
MEMORY_BOMB = "memory_bomb"  # services/chaos/memory_bomb.py
FAST = ("kill_worker", "kill_matcher", "restart_kafka", HOSTILE)  # the subset `make test` runs
ALL = (*SCENARIOS, MEMORY_BOMB, HOSTILE)
