"""One fault scenario end to end: stream sightings, inject the fault mid-stream, end it, wait until every
uploaded sighting has settled (identified and announced on the stream and the topics, or dead-lettered with a
reason) or the settle timeout passed, then count.

Counts per scenario (the keys of `whaleid chaos --json`):
    uploaded        sightings whose photo upload succeeded (the app's retries included)
    identified      with an identification in Redis
    dead_lettered   {reason: count} of the sightings dead-lettered (Redis `failure:` markers)
    lost            uploaded sightings not settled at the end, by where they are missing: `sightings` (neither
                    identified nor dead-lettered), `stream` (identified, no stream entry), and per topic
                    (identified, never seen on `identifications` / new ones on `new-individuals`)
    duplicated      sightings with more than one stream entry (`stream`), and per topic keys with two different
                    records (two answers for one sighting)
    redelivered     per topic, extra deliveries of an identical record (at-least-once, deduplicated by key)
    recover_s       seconds from the end of the fault until the last sighting settled
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from services.core import topics
from services.devtools.chaos.environment import ChaosEnvironment
from services.devtools.chaos.observe import TopicObserver, redis_outcome, stream_entries
from services.devtools.chaos.scenarios import HOSTILE, MEMORY_BOMB, Scenario
from services.devtools.chaos.workload import Workload


@dataclass
class RunOptions:
    sightings: int = 300
    rate_per_s: float = 40.0
    settle_timeout_s: float = 150.0


def run_scenario(env: ChaosEnvironment, observer: TopicObserver, scenario: Scenario, options: RunOptions,
                 first_sighting: int) -> dict:
    progress = env.progress
    workload = Workload(env.gateway_url, env.settings.gateway_token, options.sightings, options.rate_per_s,
                        env.individuals, first_sighting=first_sighting).start()
    workload.wait_progress(1 / 3)
    fault_at = time.monotonic()
    progress(f"{scenario.name}: {scenario.fault}")
    scenario.inject(env)
    if scenario.hold_s:
        time.sleep(scenario.hold_s)
    scenario.recover(env)
    recovered_at = time.monotonic()
    workload.join()
    ids = [u.sighting_id for u in workload.uploaded]
    progress(f"{scenario.name}: {len(ids)} uploaded ({workload.retries} app retries); waiting until each settled")
    settled_at, state = _settle(env, observer, ids, options.settle_timeout_s, progress, scenario.name)
    result = _count(workload, state)
    result.update(
        name=scenario.name, fault=scenario.fault, fault_s=round(recovered_at - fault_at, 1),
        recover_s=round(settled_at - recovered_at, 1) if settled_at is not None else None,
    )
    if scenario.check is not None:
        result.update(scenario.check(env, options.settle_timeout_s))
    return result


def _settle(env, observer, ids, timeout_s, progress, name):
    deadline = time.monotonic() + timeout_s
    last_report = time.monotonic()
    while True:
        state = _state(env, observer, ids)
        open_ = sum(1 for s in state["per_sighting"].values() if not s["settled"])
        if not open_:
            return time.monotonic(), state
        if time.monotonic() > deadline:
            progress(f"{name}: {open_} sighting(s) still not settled after {timeout_s:.0f} s")
            return None, state
        if time.monotonic() - last_report > 10:
            progress(f"{name}: {len(ids) - open_}/{len(ids)} settled")
            last_report = time.monotonic()
        time.sleep(0.5)


def _state(env, observer, ids) -> dict:
    outcome = redis_outcome(env.redis, ids)
    stream = stream_entries(env.redis)
    delivered = {topic: observer.deliveries(topic, ids) for topic in (topics.IDENTIFICATIONS, topics.NEW_INDIVIDUALS)}
    per_sighting = {}
    for sighting_id in ids:
        entry = dict(outcome[sighting_id])
        if entry["status"] == "identified":
            entry["stream"] = stream.get(sighting_id, 0)
            entry["in_identifications"] = sighting_id in delivered[topics.IDENTIFICATIONS]
            entry["in_new_individuals"] = sighting_id in delivered[topics.NEW_INDIVIDUALS]
            entry["settled"] = (entry["stream"] >= 1 and entry["in_identifications"]
                                and (entry["in_new_individuals"] or not entry["new_individual"]))
        else:
            entry["settled"] = entry["status"] == "failed"
        per_sighting[sighting_id] = entry
    return {"per_sighting": per_sighting, "delivered": delivered}


def _count(workload: Workload, state: dict) -> dict:
    per = state["per_sighting"]
    identified = [s for s in per.values() if s["status"] == "identified"]
    truth = {u.sighting_id: u.individual for u in workload.uploaded}
    lost = {
        "sightings": sum(1 for s in per.values() if s["status"] == "pending"),
        "stream": sum(1 for s in identified if s["stream"] == 0),
        topics.IDENTIFICATIONS: sum(1 for s in identified if not s["in_identifications"]),
        topics.NEW_INDIVIDUALS: sum(1 for s in identified if s["new_individual"] and not s["in_new_individuals"]),
    }
    duplicated = {"stream": sum(1 for s in identified if s["stream"] > 1)}
    redelivered = {}
    for topic, deliveries in state["delivered"].items():
        duplicated[topic] = sum(1 for contents in deliveries.values() if len(contents) > 1)
        redelivered[topic] = sum(sum(contents.values()) - len(contents) for contents in deliveries.values())
    return {
        "uploaded": len(per),
        "not_accepted": workload.not_accepted,
        "refused": len(workload.refused),
        "refusals": workload.refused[:5],
        "identified": len(identified),
        "top1_right": sum(1 for i, s in per.items() if s["status"] == "identified" and s["top1"] == truth[i]),
        "dead_lettered": dict(Counter(s["reason"] for s in per.values() if s["status"] == "failed")),
        "lost": lost,
        "duplicated": duplicated,
        "redelivered": redelivered,
    }


def scenario_passed(result: dict) -> bool:
    """Nothing lost, nothing duplicated, no good photo dead-lettered (a fault is not the photo's fault), every bad
    input (a scenario's own, e.g. malformed records) with its reason, and none of the scenario's `problems`."""
    return (not any(result["lost"].values()) and not any(result["duplicated"].values())
            and not result["dead_lettered"] and not result["refused"] and not result.get("problems")
            and result.get("with_reason") == result.get("bad_inputs"))


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)


def failure_reason(result: dict) -> str:
    """Why a scenario failed, in words ("" when it passed)."""
    if result.get("passed"):
        return ""
    if result.get("error"):
        return f"could not run: {result['error']}"
    reasons = []
    if any((result.get("lost") or {}).values()):
        reasons.append(f"lost {sum(result['lost'].values())} ({_counts(result['lost'])})")
    if any((result.get("duplicated") or {}).values()):
        reasons.append(f"duplicated {sum(result['duplicated'].values())} ({_counts(result['duplicated'])})")
    if result.get("with_reason") != result.get("bad_inputs"):  # bad inputs must end with a reason
        reasons.append(f"{result.get('with_reason')}/{result.get('bad_inputs')} bad inputs got a reason")
    reasons += result.get("problems") or []
    if result.get("name") in (HOSTILE, MEMORY_BOMB):  # their dead letters are the bad inputs'
        for key in ("unusual_identified", "good_identified"):
            done, _, total = str(result.get(key, "")).partition("/")
            if done != total:
                reasons.append(f"{key.replace('_', ' ')} {result.get(key)}")
        if result.get("mismatches"):
            first = result["mismatches"][0]
            reasons.append(f"{len(result['mismatches'])} verdict(s) not as expected, e.g. {first}")
    else:
        if result.get("dead_lettered"):
            reasons.append(f"good photos dead-lettered ({_counts(result['dead_lettered'])})")
        if result.get("refused"):
            reasons.append(f"{result['refused']} good upload(s) refused")
    return "; ".join(reasons) or "failed"
