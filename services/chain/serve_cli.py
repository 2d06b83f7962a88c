"""`whaleid serve gateway|bridge|worker|matcher|reconciler|webhooks`: one stage of the chain in this process."""

from __future__ import annotations

import argparse
from pathlib import Path

SERVICES = ("gateway", "bridge", "worker", "matcher", "reconciler", "webhooks")


# The `serve` options each service uses (every other one is refused, never silently ignored).
SERVICE_OPTIONS = {
    "gateway": ("--config",),  # its /metrics is on its own HTTP port (gateway_port)
    "bridge": ("--config", "--metrics-port", "--source"),
    "worker": ("--config", "--index", "--web-port", "--metrics-port"),
    "matcher": ("--config", "--index", "--web-port", "--metrics-port"),
    "reconciler": ("--config", "--metrics-port"),  # several take turns: one pass at a time, under a Redis lease
    "webhooks": ("--config", "--metrics-port"),  # several share the work through their consumer group
}


def _given_options(args: argparse.Namespace) -> list[str]:
    given = {"--config": args.config, "--index": args.index, "--web-port": args.web_port,
             "--metrics-port": args.metrics_port, "--source": args.source}
    return [flag for flag, value in given.items() if value is not None]


def stop_with_stack(settings, poll_s: float = 1.0, limit_s: float = 10.0) -> None:
    """A service of the embedded stack stops when the stack is brought down for good (`whaleid stack down` removes
    its state file), instead of retrying its servers forever: SIGTERM to itself (the services stop quickly when
    their broker is gone: services.chain.shutdown), and an exit `limit_s` later should the stop hang. A server
    restarted in place (chaos, `Stack.restart_server`) keeps the state file: the service rides it out."""
    import logging
    import os
    import signal
    import threading
    import time

    state = Path(settings.run_dir) / "state.json"
    if settings.profile != "local" or not state.is_file():
        return

    def watch() -> None:
        missing = 0
        while missing < 2:  # twice in a row: never a rewrite in progress
            time.sleep(poll_s)
            missing = 0 if state.exists() else missing + 1
        logging.getLogger(__name__).warning("the embedded stack in %s went down: stopping", settings.run_dir)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(limit_s)
        os._exit(0)

    threading.Thread(target=watch, name="stop-with-stack", daemon=True).start()


def _serve(args: argparse.Namespace) -> int:
    from services.core.settings import load_settings

    unused = [flag for flag in _given_options(args) if flag not in SERVICE_OPTIONS[args.service]]
    if unused:
        from services.core.errors import ConfigError

        raise ConfigError(f"`serve {args.service}` does not use {', '.join(unused)}: it takes "
                          f"{', '.join(SERVICE_OPTIONS[args.service])}")
    args.index = args.index or 0
    settings = load_settings(config_file=args.config)
    if args.source is not None:
        settings = settings.with_overrides(bridge_source=args.source)
    stop_with_stack(settings)
    if args.service == "webhooks":
        from services.chain.webhooks import run_webhooks

        return run_webhooks(settings, metrics_port=args.metrics_port)
    if args.service == "reconciler":
        from services.chain.reconciler import run_reconciler

        return run_reconciler(settings, metrics_port=args.metrics_port)
    if args.service == "gateway":
        from services.chain.gateway import run_gateway

        return int(run_gateway(settings) or 0)
    if args.service == "bridge":
        from services.chain.bridge import run_bridge

        return int(run_bridge(settings, metrics_port=args.metrics_port) or 0)
    if args.service == "worker":
        from services.chain.worker.agent import run_worker

        return run_worker(settings, args.index, args.web_port, args.metrics_port)
    from services.chain.matcher.agent import run_matcher

    return run_matcher(settings, args.index, args.web_port, args.metrics_port)


def register(subparsers) -> None:
    """Add this stage's sub-commands to `whaleid`."""
    serve = subparsers.add_parser("serve", help="run one service of the streaming chain")
    serve.add_argument("service", choices=SERVICES, help="which service")
    serve.add_argument("--config", help="settings TOML file (else WHALEID_CONFIG / environment / stack state)")
    serve.add_argument("--index", type=int, default=None,
                       help="instance number of a worker/matcher: its default ports are base + 10 * index")
    serve.add_argument("--web-port", type=int, default=None, help="worker/matcher Faust web port (default: derived)")
    serve.add_argument("--metrics-port", type=int, default=None,
                       help="bridge/worker/matcher/reconciler /metrics port (default: metrics_port_base + stage offset; "
                            "0 = none); "
                            "the gateway serves /metrics on its own HTTP port")
    serve.add_argument("--source", choices=("sqs", "seaweedfs", "auto"), default=None,
                       help="bridge only: upload events from the SQS queue (AWS S3, moto), from SeaweedFS's filer "
                            "events on Kafka, or auto: whichever the embedded stack's S3 server produces "
                            "(default: setting bridge_source)")
    serve.set_defaults(func=_serve)
