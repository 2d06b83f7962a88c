"""The embedded stack: Kafka (Tansu), S3 (SeaweedFS on disk, the default, or moto with SQS: `stack_s3`), Redis,
Triton and (when installed) Prometheus, each its own process on free loopback ports, recorded in
`<run_dir>/state.json` (format: docs/interfaces.md)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

from services.core.errors import ServerStartError, StackError
from services.core.settings import STATE_ADDRESSES, Settings, load_settings, read_stack_state
from services.devtools.stack.binaries import on_path
from services.devtools.stack.health import CHECKS, import_clients
from services.devtools.stack.kafka import KafkaServer
from services.devtools.stack.ports import free_ports
from services.devtools.stack.process import pid_alive, pid_owned_by, stop_pid
from services.devtools.stack.prometheus import PrometheusServer
from services.devtools.stack.redis import RedisServer
from services.devtools.stack.s3 import S3Server
from services.devtools.stack.scrape_targets import remove_target, write_target
from services.devtools.stack.seaweedfs import PORTS as WEED_PORTS
from services.devtools.stack.seaweedfs import SeaweedFSServer, remove_grpc_sockets, wipe_data
from services.devtools.stack.server import ManagedServer
from services.devtools.stack.triton import TritonServer

log = logging.getLogger(__name__)

SERVERS = ("kafka", "s3", "redis", "triton", "prometheus")  # start order; stopped in reverse
PORT_NAMES = ("kafka", "s3", "redis", "triton_http", "triton_grpc", "triton_metrics", "prometheus", *WEED_PORTS)
S3_KINDS = ("moto", "seaweedfs")  # setting stack_s3 / Stack(s3=...)
DATA_DIRS = ("redis",)  # besides SeaweedFS's: what `up(fresh=True)` wipes under the run dir
STATE_FILE = "state.json"
STOP_GRACE = {"s3": {"grace": SeaweedFSServer.stop_grace_s}}  # stop_pid options of a recorded server (moto: instant)


def owner_marker(run_dir: Path, server: str) -> str:
    return f"{Path(run_dir).resolve()}#{server}"


class Stack:
    """`Stack(settings).up()` starts the servers and writes the state; `.down()` stops exactly those PIDs.

    `servers` picks a subset (default: all, Prometheus only when installed or `with_prometheus=True`);
    `ports` pins ports by name (kafka, s3, redis, triton_http, triton_grpc, triton_metrics, prometheus);
    `scrape_targets` ({job: "host:port"}) are extra Prometheus targets (also `add_scrape_target` later);
    `s3` picks the S3 server (moto | seaweedfs; default: setting stack_s3)."""

    def __init__(
        self,
        settings: Settings,
        model_repository: Path | None = None,
        with_prometheus: bool | None = None,
        *,
        scrape_targets: Mapping[str, str] | None = None,
        servers: Sequence[str] | None = None,
        ports: Mapping[str, int] | None = None,
        s3: str | None = None,
    ) -> None:
        self.settings = settings
        self.s3 = s3 or settings.stack_s3
        if self.s3 not in S3_KINDS:
            raise StackError(f"unknown S3 server {self.s3!r} (stack_s3); known: {', '.join(S3_KINDS)}")
        self.run_dir = Path(settings.run_dir).resolve()
        self.model_repository = Path(model_repository or settings.model_repository).resolve()
        unknown = set(servers or ()) - set(SERVERS)
        if unknown:
            raise StackError(f"unknown server(s) {', '.join(sorted(unknown))}; known: {', '.join(SERVERS)}")
        unknown_ports = set(ports or ()) - set(PORT_NAMES)
        if unknown_ports:
            raise StackError(
                f"unknown port name(s) {', '.join(sorted(unknown_ports))}; known: {', '.join(PORT_NAMES)}"
            )
        self.with_prometheus = with_prometheus
        self.requested = tuple(servers) if servers else None
        self.ports = dict(ports or {})
        self.scrape_targets = dict(scrape_targets or {})
        self.timings: dict[str, float] = {}  # seconds to healthy per server, and "total"
        self._running: dict[str, ManagedServer] = {}

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    @property
    def state(self) -> dict[str, Any] | None:
        return read_stack_state(self.run_dir)

    @classmethod
    def from_state(cls, run_dir: Path | str, settings: Settings | None = None) -> "Stack":
        """The stack recorded in `run_dir` (for status/down/env from another process)."""
        run_dir = Path(run_dir).resolve()
        if read_stack_state(run_dir) is None:
            raise StackError(
                f"no stack is up in {run_dir} (no {STATE_FILE}); start one with `whaleid stack up`"
            )
        settings = settings or load_settings(run_dir=run_dir)
        stack = cls(settings.with_overrides(run_dir=run_dir))
        stack.model_repository = Path(
            read_stack_state(run_dir)["servers"]
            .get("triton", {})
            .get("model_repository", stack.model_repository)
        )
        return stack

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_path)

    def live_pids(self) -> dict[str, int]:
        """Servers of the recorded state whose process is still running (and ours)."""
        state = self.state or {}
        return {
            name: entry["pid"]
            for name, entry in state.get("servers", {}).items()
            if pid_alive(entry["pid"]) and pid_owned_by(entry["pid"], owner_marker(self.run_dir, name))
        }

    # ------------------------------------------------------------------ up
    def _selected(self) -> list[str]:
        names = list(self.requested or SERVERS)
        installed = on_path("prometheus") is not None
        if self.with_prometheus is False or (
            self.with_prometheus is None and self.requested is None and not installed
        ):
            if "prometheus" in names:
                names.remove("prometheus")
                log.info(
                    "prometheus %s; the stack runs without it",
                    "disabled" if self.with_prometheus is False else "is not installed",
                )
        elif self.with_prometheus and "prometheus" not in names:
            names.append("prometheus")
        if "prometheus" in names and not installed:
            raise StackError(
                "prometheus was asked for but is not on PATH (`make install` installs it as root)"
            )
        return names

    def _build(self, names: list[str]) -> list[ManagedServer]:
        ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
        ports.update(self.ports)
        log_dir = self.run_dir / "logs"
        built: dict[str, ManagedServer] = {}
        for name in names:
            owner = owner_marker(self.run_dir, name)
            if name == "kafka":
                built[name] = KafkaServer(log_dir, owner, ports["kafka"])
            elif name == "s3" and self.s3 == "seaweedfs":
                bootstrap = built["kafka"].bootstrap if "kafka" in built else self.settings.kafka_bootstrap
                if not bootstrap:
                    raise StackError("SeaweedFS publishes its events to Kafka: start the stack's kafka too, or set "
                                     "kafka_bootstrap")
                built[name] = SeaweedFSServer(log_dir, owner, ports["s3"], ports, self.settings, bootstrap)
            elif name == "s3":
                built[name] = S3Server(log_dir, owner, ports["s3"], self.settings)
            elif name == "redis":
                built[name] = RedisServer(log_dir, owner, ports["redis"])
            elif name == "triton":
                triton_ports = (ports["triton_http"], ports["triton_grpc"], ports["triton_metrics"])
                built[name] = TritonServer(log_dir, owner, self.model_repository, triton_ports)
            elif name == "prometheus":
                static = {"triton": built["triton"].metrics} if "triton" in built else {}
                built[name] = PrometheusServer(log_dir, owner, ports["prometheus"], self.run_dir, static)
        return list(built.values())

    def up(self, timeout: float = 90, fresh: bool = False) -> dict[str, Any]:
        """Start every selected server, wait until each answers a real request, provision, write the state.
        `fresh` first wipes the data kept under the run dir (SeaweedFS's objects, Redis's append-only file)."""
        live = self.live_pids()
        if live:
            pids = ", ".join(f"{n} pid {p}" for n, p in live.items())
            raise StackError(
                f"a stack is already up in {self.run_dir} ({pids}); stop it with `whaleid stack down --run-dir {self.run_dir}`"
            )
        if self.state is not None:
            log.warning("removing the stale state of a stack that is no longer running in %s", self.run_dir)
            self.state_path.unlink()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            wipe_data(self.run_dir)
            for name in DATA_DIRS:
                shutil.rmtree(self.run_dir / name, ignore_errors=True)
            log.info("fresh stack: removed the data kept in %s", self.run_dir)
        for job, address in self.scrape_targets.items():
            write_target(self.run_dir, job, address)
        servers = self._build(self._selected())
        import_clients()
        began = time.monotonic()
        try:
            self._start_all(servers, timeout)
        except BaseException:
            self._stop_running()
            raise
        self.timings = {s.name: round(s.ready_s or 0.0, 3) for s in servers}
        self.timings["total"] = round(time.monotonic() - began, 3)
        state = {
            "run_dir": str(self.run_dir),
            "started_at": time.time(),
            "servers": {s.name: {**s.entry(), "pid": s.pid, "log": str(s.log_path)} for s in servers},
        }
        self._write_state(state)
        log.info("stack up in %s after %.1f s: %s", self.run_dir, self.timings["total"], self.timings)
        return state

    # ------------------------------------------------------------------ one server (fault injection)
    def stop_server(self, name: str) -> None:
        """Stop one server this object started (SIGTERM, then SIGKILL); the others keep running."""
        self._server(name).stop()

    def start_server(self, name: str, timeout: float = 90) -> None:
        """Start a stopped server again on the same ports, wait until healthy, provision it (buckets, queues,
        notifications: what an in-memory server lost) and record its new PID."""
        server = self._server(name)
        server.ready_s = None
        server.start()
        self._wait_all([server], timeout)
        state = self.state
        if state is not None and name in state.get("servers", {}):
            state["servers"][name]["pid"] = server.pid
            self._write_state(state)
        if name == "kafka":
            self._resume_s3_events(timeout)

    def _resume_s3_events(self, timeout: float) -> None:
        """After a broker restart: SeaweedFS's filer must publish to the new (empty) broker again. weed 4.48
        reconnects by itself (measured); should it not within 20 s, weed is restarted (its data is on disk).
        Events it dropped while the broker was down are the reconciler's to re-drive."""
        weed = self._running.get("s3")
        if not isinstance(weed, SeaweedFSServer) or weed.process is None or not weed.process.alive():
            return
        weed.ensure_topic()
        if weed.events_reach_kafka():
            log.info("s3 (seaweedfs): filer events reach the restarted broker")
            return
        log.warning("s3 (seaweedfs): no filer event reached the restarted broker within 20 s; restarting weed")
        self.restart_server("s3", timeout)
        if not weed.events_reach_kafka():
            raise ServerStartError("s3", "the restarted weed publishes no filer events to Kafka", weed.log_tail())

    def restart_server(self, name: str, timeout: float = 90) -> None:
        self.stop_server(name)
        self.start_server(name, timeout)

    def _server(self, name: str) -> ManagedServer:
        if name not in self._running:
            raise StackError(f"{name} is not a server this process started (running: {', '.join(self._running)})")
        return self._running[name]

    def _start_all(self, servers: list[ManagedServer], timeout: float) -> None:
        """Start the servers, each once the ones it needs (`after`) are healthy, and wait for all of them."""
        names = {s.name for s in servers}
        healthy = {s.name: threading.Event() for s in servers}
        failed = threading.Event()

        def start(server: ManagedServer) -> None:
            try:
                deadline = time.monotonic() + timeout
                for dep in (d for d in server.after if d in names):
                    while not healthy[dep].wait(0.05):
                        if failed.is_set():
                            return  # the dependency's own error is the one reported
                        if time.monotonic() > deadline:
                            raise ServerStartError(server.name, f"{dep} was not healthy after {timeout:.0f} s")
                server.start()
                self._running[server.name] = server
                self._wait_all([server], timeout)
                healthy[server.name].set()
            except BaseException:
                failed.set()
                raise

        with ThreadPoolExecutor(max_workers=len(servers)) as pool:
            futures = [pool.submit(start, server) for server in servers]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]

    @staticmethod
    def _wait_all(servers: list[ManagedServer], timeout: float) -> None:
        """Wait for every server in parallel (each timed from its own start) and provision it once healthy."""

        def ready(server: ManagedServer) -> None:
            server.wait_healthy(timeout)
            try:
                server.provision()
            except Exception as exc:  # noqa: BLE001 - reported with the server's name and log
                raise ServerStartError(
                    server.name, f"setting it up failed: {exc}", server.log_tail()
                ) from exc

        with ThreadPoolExecutor(max_workers=len(servers)) as pool:
            futures = [pool.submit(ready, server) for server in servers]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]

    def _stop_running(self) -> None:
        with ThreadPoolExecutor(max_workers=len(SERVERS)) as pool:
            list(pool.map(lambda s: s.stop(), reversed(list(self._running.values()))))
        self._running.clear()

    # ------------------------------------------------------------------ down / status / env
    def down(self) -> list[str]:
        """Stop exactly the recorded PIDs (SIGTERM, then SIGKILL of their own process group); remove the state.
        Returns the names of the servers that were stopped."""
        state = self.state
        if state is None:
            self._stop_running()
            return []

        def stop(item: tuple[str, dict]) -> str | None:
            name, entry = item
            if name in self._running:
                self._running[name].stop()
                return name
            if stop_pid(entry["pid"], owner_marker(self.run_dir, name), **STOP_GRACE.get(name, {})):
                remove_grpc_sockets(entry.get("grpc_ports", []))  # SeaweedFS's, left in /tmp
                return name
            if pid_alive(entry["pid"]):
                log.warning("not stopping pid %d: it is not the %s this stack started", entry["pid"], name)
            return None

        items = list(reversed(list(state["servers"].items())))
        with ThreadPoolExecutor(max_workers=len(SERVERS)) as pool:
            stopped = [name for name in pool.map(stop, items) if name]
        self._running.clear()
        self.state_path.unlink(missing_ok=True)
        log.info("stack down in %s (stopped: %s)", self.run_dir, ", ".join(stopped) or "nothing was running")
        return stopped

    def status(self) -> dict[str, dict[str, Any]]:
        """Per recorded server: its entry plus `alive`, `healthy` and `error` (why it is not healthy)."""
        state = self.state
        if state is None:
            raise StackError(f"no stack is up in {self.run_dir}; start one with `whaleid stack up`")
        report = {}
        for name, entry in state["servers"].items():
            alive = pid_alive(entry["pid"]) and pid_owned_by(entry["pid"], owner_marker(self.run_dir, name))
            error = "" if alive else "process is not running"
            if alive:
                try:
                    CHECKS[name](entry)
                except Exception as exc:  # noqa: BLE001 - reported, not raised
                    error = f"{type(exc).__name__}: {exc}"
            report[name] = {**entry, "alive": alive, "healthy": alive and not error, "error": error}
        return report

    def env_exports(self) -> list[str]:
        """`export WHALEID_...=...` lines for the recorded addresses (for `eval $(whaleid stack env)`)."""
        state = self.state
        if state is None:
            raise StackError(f"no stack is up in {self.run_dir}; start one with `whaleid stack up`")
        values = {"run_dir": str(self.run_dir), "model_repository": str(self.model_repository)}
        for name, (server, key) in STATE_ADDRESSES.items():
            if key in state["servers"].get(server, {}):
                values[name] = state["servers"][server][key]
        if "bridge_source" in state["servers"].get("s3", {}):  # where this stack's upload events go
            values["bridge_source"] = state["servers"]["s3"]["bridge_source"]
        return [f"export WHALEID_{name.upper()}={shlex.quote(str(value))}" for name, value in values.items()]

    # ------------------------------------------------------------------ Prometheus targets
    def add_scrape_target(self, job: str, address: str | list[str]) -> Path:
        """Have Prometheus scrape `address` (host:port, /metrics) as job `job` (re-read within ~1 s)."""
        return write_target(self.run_dir, job, address)

    def remove_scrape_target(self, job: str) -> None:
        remove_target(self.run_dir, job)

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> "Stack":
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()
