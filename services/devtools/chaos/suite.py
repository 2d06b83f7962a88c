"""`whaleid chaos`'s run: one environment, the chosen scenarios in turn, the hostile-input scenario, the report."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from services.devtools.chaos.environment import ChaosEnvironment
from services.devtools.chaos.memory_bomb import run_memory_bomb
from services.devtools.chaos.observe import TopicObserver, redis_outcome, stream_entries
from services.devtools.chaos.runner import RunOptions, failure_reason, run_scenario, scenario_passed
from services.devtools.chaos.scenarios import HOSTILE, MEMORY_BOMB, SCENARIOS, WEBHOOK_SLOW
from services.devtools.chaos.webhook_drip import run_webhook_slow

MEMORY_BOMBS = 32  # memory_bomb: two worker batches of 16 40-megapixel files

HARNESS_LOG = "harness.log"  # in the run's log folder


@dataclass
class SuiteOptions:
    scenarios: list[str] = field(default_factory=list)
    sightings: int = 300
    hostile: int = 1000
    workdir: Path = Path(".whaleid/chaos")
    settle_timeout_s: float = 150.0
    rate_per_s: float = 40.0


def run_suite(options: SuiteOptions, progress: Callable[[str], None]) -> dict:
    """Run the scenarios; the report (`report()`) comes back whatever happened, also written to
    `<run dir>/report.json`."""
    began = time.monotonic()
    workdir = Path(options.workdir).resolve() / time.strftime("%Y%m%d-%H%M%S")
    env = ChaosEnvironment(workdir, progress)
    results: list[dict] = []
    error = ""
    log_file = harness_log(env.log_dir / HARNESS_LOG)
    try:
        _run_scenarios(env, options, progress, results)
    except Exception as exc:  # noqa: BLE001 - the stack did not come up or went away: still a report
        error = f"{type(exc).__name__}: {exc}"
        progress(f"the run stopped: {error}")
    except BaseException as exc:  # Ctrl-C: the report of what ran, then stop
        error = f"interrupted ({type(exc).__name__})"
        write_report(report(results, options.scenarios, began, env, error), workdir)
        raise
    finally:
        logging.getLogger().removeHandler(log_file)
        log_file.close()
    result = report(results, options.scenarios, began, env, error)
    write_report(result, workdir)
    return result


def harness_log(path: Path) -> logging.Handler:
    """A handler writing every record the harness's process logs at INFO and above (its own steps, the topic
    observer, the Kafka client's reconnects) to `path`, with timestamps: what to read beside the services' logs
    when a scenario recovers slowly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def report(results: list[dict], planned: list[str], began: float, env, error: str = "") -> dict:
    """The JSON report: the verdict and the first failing scenario with its reason first, then every row."""
    for result in results:
        result["failure"] = failure_reason(result)
    ran = {r["name"] for r in results}
    not_run = [name for name in planned if name not in ran]
    failing = next((r for r in results if not r["passed"]), None)
    if failing is not None:
        first = {"scenario": failing["name"], "reason": failing["failure"]}
    elif error:
        first = {"scenario": not_run[0] if not_run else None, "reason": error}
    elif not_run:
        first = {"scenario": not_run[0], "reason": "not run"}
    else:
        first = None
    passed = bool(results) and failing is None and not error and not not_run
    return {"passed": passed, "first_failure": first,
            "failed": [{"scenario": r["name"], "reason": r["failure"]} for r in results if not r["passed"]],
            "not_run": not_run, "error": error, "seconds": round(time.monotonic() - began, 1),
            "scenarios_run": len(results), "hostile_inputs": hostile_inputs(results),
            "logs": str(env.log_dir), "scenarios": results}


def hostile_inputs(results: list[dict]) -> int:
    """Hostile inputs sent in all: hostile_input's (invalid ones and valid photos in unusual encodings), the
    memory bombs, the malformed records."""
    total = 0
    for result in results:
        total += result.get("hostile_sent", result.get("bad_inputs", 0)) or 0
    return total


def write_report(result: dict, workdir: Path) -> Path | None:
    import json

    path = Path(workdir) / "report.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str))
    except OSError:
        return None
    result["report"] = str(path)
    return path


def _run_scenarios(env: ChaosEnvironment, options: SuiteOptions, progress, results: list[dict]) -> None:
    try:
        env.start()
        observer = TopicObserver(env.settings.kafka_bootstrap).start()
        try:
            run = RunOptions(options.sightings, options.rate_per_s, options.settle_timeout_s)
            for number, name in enumerate(options.scenarios):
                try:
                    if name == HOSTILE:
                        result = run_hostile(env, options.hostile, options.settle_timeout_s, progress)
                    elif name == WEBHOOK_SLOW:
                        result = run_webhook_slow(env, run, number * 100_000, progress)
                    elif name == MEMORY_BOMB:
                        result = run_memory_bomb(env, MEMORY_BOMBS, options.settle_timeout_s, progress,
                                                 _tokens(env.settings))
                    else:
                        result = run_scenario(env, observer, SCENARIOS[name], run, first_sighting=number * 100_000)
                        result["passed"] = scenario_passed(result)
                except Exception as exc:  # noqa: BLE001 - the environment is broken: report it and stop
                    progress(f"{name}: could not run: {exc}")
                    results.append(failed_scenario(name, f"{type(exc).__name__}: {exc}"))
                    break
                results.append(result)
                if not result["passed"]:
                    progress(f"{name}: FAILED: {failure_reason(result)}")
                progress(f"{name}: {'passed' if result['passed'] else 'FAILED'} "
                         f"(uploaded {result['uploaded']}, identified {result['identified']}, "
                         f"lost {sum(result['lost'].values())}, duplicated {sum(result['duplicated'].values())})")
        finally:
            observer.stop()
    finally:
        env.stop()


def failed_scenario(name: str, error: str) -> dict:
    """The row of a scenario that could not run to the end (a service that would not restart, ...)."""
    return {"name": name, "error": error, "uploaded": 0, "identified": 0, "dead_lettered": {}, "lost": {},
            "duplicated": {}, "redelivered": {}, "recover_s": None, "passed": False}


def _tokens(settings) -> dict[str, str]:
    def first(pairs: str) -> str:
        entry = next((p for p in pairs.split(",") if "=" in p), "")
        return entry.split("=", 1)[1].strip() if entry else ""

    return {"app": settings.gateway_token, "researcher": first(settings.gateway_researcher_tokens),
            "admin": first(settings.gateway_admin_tokens)}


def run_hostile(env: ChaosEnvironment, count: int, timeout_s: float, progress) -> dict:
    """At least `count` bad inputs mixed with good photos through the gateway; every one must end with a reason
    (refused with the gateway's or S3's error, or dead-lettered with the stage's reason) or, for valid photos in
    unusual encodings, identified as the individual they show (services/devtools/chaos/hostile.py)."""
    from services.devtools.chaos import hostile
    from services.devtools.chaos.probe_model import individual_id

    limits = {"individuals": env.individuals, "max_upload_bytes": env.settings.max_upload_bytes,
              "max_pixels": env.settings.max_image_pixels}
    cases = hostile.mixed_cases(hostile=count, good=max(10, count // 5), seed=0, **limits)
    progress(f"{HOSTILE}: sending {count} hostile inputs ({sum(c.bad_input for c in cases)} invalid) mixed with "
             f"{len(cases) - count} good photos")
    started = time.monotonic()
    submissions = hostile.submit_all(cases, env.gateway_url, _tokens(env.settings))
    sent_at = time.monotonic()
    verdicts = hostile.settle(submissions, env.gateway_url, _tokens(env.settings), timeout_s,
                              individual_of=individual_id)
    summary = hostile.summarise(verdicts)
    accepted = [v.sighting_id for v in verdicts if v.sighting_id]
    outcome = redis_outcome(env.redis, accepted) if accepted else {}
    stream = stream_entries(env.redis)
    result = {
        "name": HOSTILE,
        "fault": f"{count} hostile inputs (bytes, encodings, metadata, tokens, replays): {summary['bad_inputs']} "
                 f"invalid, to be refused or dead-lettered with a reason, {summary['unusual_valid']} valid photos in "
                 f"unusual encodings, to be identified; among {summary['good']} good photos",
        "uploaded": len(accepted),
        "identified": sum(1 for e in outcome.values() if e["status"] == "identified"),
        "dead_lettered": summary["dead_letter_reasons"],
        "refused": sum(summary["refusals_by_status"].values()),
        "refusals_by_status": summary["refusals_by_status"],
        "lost": {"sightings": summary["lost"]},
        "duplicated": {"stream": sum(1 for s in accepted if stream.get(s, 0) > 1)},
        "redelivered": {},
        "bad_inputs": summary["bad_inputs"],
        "with_reason": summary["with_reason"],
        "hostile_sent": count,
        "unusual_identified": f"{summary['unusual_identified']}/{summary['unusual_valid']}",
        "good_identified": f"{summary['good_identified']}/{summary['good']}",
        "mismatches": summary["mismatches"][:20],
        "by_category": summary["by_category"],
        "fault_s": round(sent_at - started, 1),
        "recover_s": round(time.monotonic() - sent_at, 1),
    }
    result["passed"] = bool(summary["passed"]) and not any(result["duplicated"].values())
    return result
