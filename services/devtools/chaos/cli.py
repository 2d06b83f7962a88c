"""`whaleid chaos [--json] [--fast] [--scenario NAME ...]`: the fault-injection suite on the embedded stack.

It brings up its own stack and services under `--workdir` (loopback only), runs each scenario in turn (a few
hundred sightings streamed while one fault is injected), prints one row per scenario and, with `--json`, the
report on stdout (progress on stderr); the same report is written, failing or not, to `report.json` in the
run's directory: `passed`, `first_failure` (the first failing scenario and its reason), `failed`, `not_run`,
`error`, `scenarios_run`, `hostile_inputs` (sent in all), then `scenarios` (one row each). `passed` is true only when nothing
was lost or duplicated in any scenario, no good photo was dead-lettered, and every bad input got a reason.
Exit code 0 when passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from services.core.errors import ConfigError


def _console_records(record: logging.LogRecord) -> bool:
    """What the console shows of the harness's log (all of it goes to harness.log)."""
    if record.name.startswith("kafka"):
        return record.levelno >= logging.CRITICAL
    return record.levelno >= logging.WARNING


def _run(args: argparse.Namespace) -> int:
    from services.devtools.chaos.scenarios import ALL, FAST
    from services.devtools.chaos.suite import SuiteOptions, run_suite

    names = args.scenario or list(FAST if args.fast else ALL)
    unknown = sorted(set(names) - set(ALL))
    if unknown:
        raise ConfigError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(ALL)}")
    stream = sys.stderr if args.json else sys.stdout
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[chaos {time.monotonic() - started:6.1f}s] {message}", file=stream, flush=True)

    # the console: warnings and errors only, none of the topic observer's reconnects while a broker restarts (kafka);
    # the harness's own log, those reconnects included, goes to harness.log in the run's log folder (suite.run_suite)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_console_records)
    for noisy in ("botocore", "urllib3", "faust", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for harness in ("services", "kafka"):
        logging.getLogger(harness).setLevel(logging.INFO)
    sightings = args.sightings if args.sightings else (60 if args.fast else 300)
    hostile = args.hostile if args.hostile else (120 if args.fast else 1000)
    options = SuiteOptions(scenarios=names, sightings=sightings, hostile=hostile, workdir=args.workdir,
                           settle_timeout_s=args.settle_timeout)
    report = run_suite(options, progress)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from services.devtools.chaos.report import table

        print()
        print(table(report["scenarios"]))
        print()
        print(f"passed: {'yes' if report['passed'] else 'NO'} ({report['seconds']:.0f} s; logs in {report['logs']}; "
              f"report {report.get('report', '-')})")
        if report.get("first_failure"):
            print(f"first failure: {report['first_failure']['scenario']}: {report['first_failure']['reason']}")
    return 0 if report["passed"] else 1


def register(subparsers) -> None:
    chaos = subparsers.add_parser(
        "chaos", help="fault-injection suite: kill services, restart servers, hostile uploads; count lost and duplicated",
    )
    chaos.add_argument("--json", action="store_true", help="print the report as JSON (progress goes to stderr)")
    chaos.add_argument("--fast", action="store_true", help="the quick subset (worker and matcher kills, a broker "
                                                           "restart, 120 hostile inputs, 60 sightings per scenario)")
    chaos.add_argument("--scenario", action="append", metavar="NAME", help="run only this scenario (repeatable)")
    chaos.add_argument("--sightings", type=int, default=0, help="good sightings per scenario (default 300; --fast 60)")
    chaos.add_argument("--hostile", type=int, default=0, help="bad inputs in hostile_input (default 1000; --fast 120)")
    chaos.add_argument("--settle-timeout", type=float, default=150.0,
                       help="seconds each scenario waits for its sightings to settle before counting them lost")
    chaos.add_argument("--workdir", type=Path, default=Path(".whaleid/chaos"),
                       help="where the stack, the probe model and the logs go")
    chaos.set_defaults(func=_run)
