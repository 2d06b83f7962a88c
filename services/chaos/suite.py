"""`whaleid chaos`'s run: one environment, the chosen scenarios in turn, the hostile-input scenario, the report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from services.chaos.environment import ChaosEnvironment
from services.chaos.observe import TopicObserver, redis_outcome, stream_entries
from services.chaos.runner import RunOptions, run_scenario, scenario_passed
from services.chaos.scenarios import HOSTILE, SCENARIOS


@dataclass
class SuiteOptions:
    scenarios: list[str] = field(default_factory=list)
    sightings: int = 300
    hostile: int = 1000
    workdir: Path = Path(".whaleid/chaos")
    settle_timeout_s: float = 150.0
    rate_per_s: float = 40.0


def run_suite(options: SuiteOptions, progress: Callable[[str], None]) -> dict:
    began = time.monotonic()
    workdir = Path(options.workdir).resolve() / time.strftime("%Y%m%d-%H%M%S")
    env = ChaosEnvironment(workdir, progress)
    results = []
    try:
        env.start()
        observer = TopicObserver(env.settings.kafka_bootstrap).start()
        try:
            run = RunOptions(options.sightings, options.rate_per_s, options.settle_timeout_s)
            for number, name in enumerate(options.scenarios):
                if name == HOSTILE:
                    result = run_hostile(env, options.hostile, options.settle_timeout_s, progress)
                else:
                    result = run_scenario(env, observer, SCENARIOS[name], run, first_sighting=number * 100_000)
                    result["passed"] = scenario_passed(result)
                results.append(result)
                progress(f"{name}: {'passed' if result['passed'] else 'FAILED'} "
                         f"(uploaded {result['uploaded']}, identified {result['identified']}, "
                         f"lost {sum(result['lost'].values())}, duplicated {sum(result['duplicated'].values())})")
        finally:
            observer.stop()
    finally:
        env.stop()
    return {"scenarios": results, "passed": bool(results) and all(r["passed"] for r in results),
            "seconds": round(time.monotonic() - began, 1), "logs": str(env.log_dir)}


def _tokens(settings) -> dict[str, str]:
    def first(pairs: str) -> str:
        entry = next((p for p in pairs.split(",") if "=" in p), "")
        return entry.split("=", 1)[1].strip() if entry else ""

    return {"app": settings.gateway_token, "researcher": first(settings.gateway_researcher_tokens),
            "admin": first(settings.gateway_admin_tokens)}


def run_hostile(env: ChaosEnvironment, count: int, timeout_s: float, progress) -> dict:
    """At least `count` bad inputs mixed with good photos through the gateway; every one must end with a reason
    (refused with the gateway's or S3's error, or dead-lettered with the stage's reason) or, for valid photos in
    unusual encodings, identified."""
    from services.chaos import hostile

    cases = hostile.hostile_cases(count=count, seed=0)
    good = hostile.good_cases(max(10, count // 10), seed=0)
    mixed = [case for pair in zip(cases, _spread(good, len(cases)), strict=True) for case in pair if case is not None]
    tokens = _tokens(env.settings)
    progress(f"{HOSTILE}: sending {len(cases)} bad inputs mixed with {len(good)} good photos")
    started = time.monotonic()
    submissions = [hostile.submit(case, env.gateway_url, tokens) for case in mixed]
    sent_at = time.monotonic()
    verdicts = hostile.settle(submissions, env.gateway_url, tokens, timeout_s)
    summary = hostile.summarise(verdicts)
    accepted = [v.sighting_id for v in verdicts if v.sighting_id]
    outcome = redis_outcome(env.redis, accepted) if accepted else {}
    stream = stream_entries(env.redis)
    dead = {}
    for entry in outcome.values():
        if entry["status"] == "failed":
            dead[entry["reason"]] = dead.get(entry["reason"], 0) + 1
    result = {
        "name": HOSTILE,
        "fault": f"{len(cases)} bad uploads (bytes, encodings, metadata, tokens, replays) among {len(good)} good ones",
        "uploaded": len(accepted),
        "identified": sum(1 for e in outcome.values() if e["status"] == "identified"),
        "dead_lettered": dead,
        "refused": sum(1 for v in verdicts if v.outcome == "refused"),
        "lost": {"sightings": sum(1 for e in outcome.values() if e["status"] == "pending")},
        "duplicated": {"stream": sum(1 for s in accepted if stream.get(s, 0) > 1)},
        "redelivered": {},
        "bad_inputs": summary.get("bad_inputs", len(cases)),
        "with_reason": summary.get("with_reason"),
        "mismatches": summary.get("mismatches", []),
        "by_category": summary.get("by_category", {}),
        "fault_s": round(sent_at - started, 1),
        "recover_s": round(time.monotonic() - sent_at, 1),
    }
    result["passed"] = (not result["mismatches"] and not any(result["lost"].values())
                        and not any(result["duplicated"].values())
                        and result["with_reason"] == result["bad_inputs"])
    return result


def _spread(items: list, length: int) -> list:
    """`items` spread evenly over a list of `length` slots (None elsewhere)."""
    slots: list = [None] * length
    if not items:
        return slots
    step = max(1, length // len(items))
    for index, item in enumerate(items):
        position = min(length - 1, index * step)
        while slots[position] is not None and position < length - 1:
            position += 1
        slots[position] = item
    return slots
