"""`whaleid stack up | status | down | env`: the embedded stack of real servers on loopback ports."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def register(subparsers) -> None:
    """Add this stage's sub-commands to `whaleid`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run-dir", type=Path, help="state file, logs and data (default: setting run_dir)")

    stack = subparsers.add_parser(
        "stack", help="the embedded stack: Kafka, S3 (SeaweedFS or moto+SQS), Redis, Triton, Prometheus"
    )
    sub = stack.add_subparsers(dest="stack_command", metavar="ACTION", required=True)

    up = sub.add_parser("up", parents=[common], help="start the servers, wait until healthy, write the state")
    up.add_argument("--model-repository", type=Path, help="Triton model repository (default: setting)")
    up.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    up.add_argument("--s3", choices=("seaweedfs", "moto"), default=None,
                    help="S3 server: seaweedfs (on disk under the run dir, events to Kafka) or moto (in memory, "
                         "events via SQS) (default: setting stack_s3)")
    up.add_argument("--fresh", action="store_true",
                    help="wipe the data kept under the run dir first (SeaweedFS's objects, Redis's append-only file)")
    up.add_argument(
        "--timeout", type=float, default=90.0, help="seconds to wait for all servers (default 90)"
    )
    up.set_defaults(func=cmd_up)

    status = sub.add_parser(
        "status", parents=[common],
        help="health of each server (exit 0 only if all healthy); says that the broker is memory-only"
    )
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    status.set_defaults(func=cmd_status)

    down = sub.add_parser(
        "down", parents=[common], help="stop exactly the recorded servers, remove the state"
    )
    down.set_defaults(func=cmd_down)

    env = sub.add_parser(
        "env", parents=[common], help="print `export WHALEID_...` lines: eval $(whaleid stack env)"
    )
    env.set_defaults(func=cmd_env)


def _settings(args):
    from services.core.settings import load_settings

    logging.getLogger("kafka").setLevel(
        max(logging.WARNING, logging.getLogger().level)
    )  # quiet health checks
    overrides = {"run_dir": args.run_dir} if args.run_dir else {}
    return load_settings(**overrides)


def cmd_up(args) -> int:
    from services.devtools.stack import Stack

    settings = _settings(args)
    stack = Stack(
        settings,
        model_repository=args.model_repository,
        with_prometheus=False if args.no_prometheus else None,
        s3=args.s3,
    )
    state = stack.up(timeout=args.timeout, fresh=args.fresh)
    for name, entry in state["servers"].items():
        address = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("pid", "log"))
        print(f"{name:<11} pid {entry['pid']:<7} ready in {stack.timings[name]:5.2f} s  {address}")
    print(f"stack up in {stack.timings['total']:.1f} s; state: {stack.state_path}")
    print(
        f"use it from a shell: eval $(whaleid stack env --run-dir {stack.run_dir}); stop it: whaleid stack down"
    )
    return 0


def cmd_status(args) -> int:
    from services.devtools.stack import Stack

    settings = _settings(args)
    report = Stack.from_state(settings.run_dir, settings).status()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from services.devtools.stack.kafka import MEMORY_NOTE

        for name, r in report.items():
            mark = "healthy" if r["healthy"] else f"UNHEALTHY ({r['error']})"
            if name == "kafka" and r.get("storage") == "memory":
                mark += f"  ({MEMORY_NOTE})"
            elif name == "s3" and r.get("kind"):
                mark += f"  ({r['kind']}: upload events via {r.get('bridge_source', '?')})"
            print(f"{name:<11} pid {r['pid']:<7} {mark}")
    return 0 if all(r["healthy"] for r in report.values()) else 1


def cmd_down(args) -> int:
    from services.devtools.stack import Stack

    settings = _settings(args)
    stack = Stack(settings)
    if stack.state is None:
        print(f"no stack is up in {stack.run_dir}; nothing to stop")
        return 0
    stopped = stack.down()
    print(f"stack down: stopped {', '.join(stopped) or 'nothing (no recorded process was running)'}")
    return 0


def cmd_env(args) -> int:
    from services.devtools.stack import Stack

    settings = _settings(args)
    print("\n".join(Stack.from_state(settings.run_dir, settings).env_exports()))
    return 0
