"""The whole local system, as `docker compose` runs one: the embedded stack and the chain's services as detached
processes, recorded in one state file (`up.json` beside the stack's run dir: `.whaleid/up.json` by default), which
`whaleid up`, `whaleid demo --keep-up`, `whaleid down` and `whaleid upload` share. Its JSON: `by` (up | demo),
`started_at`, `stack_run_dir` (the stack's own state.json is there), `stack_started`, `gateway_url`, `review_url`,
`metrics_port_base`, `logs`, `services` {name: {`pid`, `log`, `web_port`?}}; each service's environment carries
`WHALEID_STACK_OWNER=<stack_run_dir>#service:<name>`, so a PID reused by another process is never signalled.

Stopping is services first (they drain and commit in about a second while their servers are there), then the stack.
A service whose stack goes away (`whaleid stack down`) exits by itself (services/chain/serve_cli.py)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

from services.chain.gateway.client import STATE_FILE, AppClient, review_url, up_state_path
from services.core.errors import WhaleIdError
from services.core.service_ports import default_port
from services.core.settings import Settings, load_settings
from services.devtools.demo.processes import ServiceProcess, identity_env, service_env
from services.devtools.stack.process import OWNER_ENV, pid_alive, pid_owned_by, stop_pid

log = logging.getLogger(__name__)

SERVICES = ("worker", "matcher", "bridge", "reconciler", "gateway")  # start order: consumers first
SERVICE_STOP_GRACE_S = 15.0


class UpError(WhaleIdError):
    """The system did not come up (or is already up); the message says which part and where its log is."""


def service_owner(stack_dir: Path, name: str) -> str:
    return f"{Path(stack_dir).resolve()}#service:{name}"


def free_port_block(count: int = 6) -> int:
    """A base port with `count` consecutive free ports (metrics of gateway, bridge, worker, matcher, reconciler,
    webhooks), outside the ephemeral range so that no outgoing connection takes one before its service binds it."""
    from services.devtools.stack.ports import free_block

    try:
        return free_block(count)
    except OSError as exc:
        raise UpError(f"no block of free ports for the services' metrics: {exc}") from exc


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def live_services(state: dict) -> dict[str, int]:
    """The recorded services still running (and ours: their environment carries the owner marker)."""
    stack_dir = state.get("stack_run_dir", "")
    return {name: entry["pid"] for name, entry in state.get("services", {}).items()
            if pid_alive(entry["pid"]) and pid_owned_by(entry["pid"], service_owner(stack_dir, name))}


class System:
    """The stack in `stack_dir` plus the services, their logs in `log_dir`. `start_stack`, then (the gallery
    published) `start_services`; `write_state` records it for `whaleid down`; `stop` brings it down here."""

    def __init__(self, settings: Settings, stack_dir: Path, log_dir: Path, progress: Callable[[str], None],
                 config: str | None = None, extra_env: dict[str, str] | None = None):
        self.base, self.config, self.progress = settings, config, progress
        self.stack_dir, self.log_dir = Path(stack_dir).resolve(), Path(log_dir).resolve()
        self.extra_env = dict(extra_env or {})
        self.stack = None
        self.stack_started = False
        self.services: list[ServiceProcess] = []
        self.settings: Settings | None = None
        self.overrides: dict = {}

    def start_stack(self, model_repository: Path, timeout: float = 180, gateway_port: int | None = None) -> Settings:
        """Bring the stack up (or adopt the one already up in `stack_dir`); returns the settings with its
        addresses."""
        from services.devtools.stack import Stack
        from services.devtools.stack.ports import free_port, port_in_use

        port = gateway_port or self.base.gateway_port
        if port_in_use(port):
            port = free_port()
        self.overrides = {"run_dir": self.stack_dir, "model_repository": Path(model_repository).resolve(),
                          "gateway_port": port, "metrics_port_base": free_port_block()}
        self.stack = Stack(load_settings(config_file=self.config, **self.overrides))
        if self.stack.live_pids():
            self.progress(f"the stack already up in {self.stack_dir} is used")
            self.stack = Stack.from_state(self.stack_dir, load_settings(config_file=self.config, **self.overrides))
        else:
            self.progress(f"bringing the embedded stack up in {self.stack_dir}")
            self.stack.up(timeout=timeout)
            self.stack_started = True
        self.settings = load_settings(config_file=self.config, **self.overrides)  # now with the addresses
        return self.settings

    def start_services(self, names: tuple[str, ...] = SERVICES, timeout: float = 180) -> None:
        env = service_env(self.stack_dir, **{k: str(v) for k, v in self.overrides.items() if k != "run_dir"},
                          **self.extra_env)
        for name in names:
            service_environment = {**env, **identity_env(self.stack_dir, name),
                                   OWNER_ENV: service_owner(self.stack_dir, name)}
            self.services.append(ServiceProcess(name, service_environment, self.log_dir, metrics_port=None).start())
            port = self.gateway_port if name == "gateway" else default_port(self.overrides["metrics_port_base"], name)
            self.stack.add_scrape_target(f"whaleid-{name}", f"127.0.0.1:{port}")
        self.progress(f"started {', '.join(names)} (logs in {self.log_dir}); waiting until they are ready")
        for service in self.services:
            service.wait_ready(timeout)
        self.client = AppClient(self.gateway_url, self.settings.gateway_token)
        self.client.wait_healthy(60)
        self.progress("all services ready")

    @property
    def gateway_port(self) -> int:
        return int(self.overrides["gateway_port"])

    @property
    def gateway_url(self) -> str:
        return f"http://{self.settings.gateway_host}:{self.gateway_port}"

    @property
    def review_url(self) -> str:
        return review_url(self.settings, self.gateway_url)

    def write_state(self, path: Path, by: str, **extra) -> Path:
        """Record the running system for `whaleid down` and `whaleid upload`."""
        state = {"by": by, "started_at": time.time(), "stack_run_dir": str(self.stack_dir),
                 "stack_started": self.stack_started, "gateway_url": self.gateway_url, "review_url": self.review_url,
                 "metrics_port_base": self.overrides["metrics_port_base"], "logs": str(self.log_dir),
                 "services": {s.name: {"pid": s.proc.pid, "log": str(s.log_path),
                                       **({"web_port": s.web_port} if s.web_port else {})}
                              for s in self.services if s.running()}, **extra}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        os.replace(tmp, path)
        return path

    def stop(self) -> None:
        """Services first (in reverse start order), then the stack if this object started it."""
        for service in reversed(self.services):
            service.stop(SERVICE_STOP_GRACE_S)
        if self.stack is not None and self.stack_started:
            self.stack.down()


def logs_to_file(path: Path) -> None:
    """Library logs go to `path`; the console shows progress and results only (Kafka clients retrying while the broker starts, boto, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):  # the console's handlers (main's basicConfig); others stay
        if type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.stdout):
            root.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


@contextlib.contextmanager
def stderr_to(path: Path):
    """File descriptor 2 (TensorFlow's C++ messages, absl) into `path` for the block; restored after."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as log_file:
            os.dup2(log_file.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def check_not_up(path: Path) -> None:
    state = read_state(path)
    if state is None:
        return
    live = live_services(state)
    if live:
        raise UpError(f"the system is already up (started by `whaleid {state.get('by', 'up')}`: "
                           f"{', '.join(f'{n} pid {p}' for n, p in live.items())}; gateway {state.get('gateway_url')}); "
                           f"stop it first with `whaleid down`")


def stop_recorded(path: Path, progress: Callable[[str], None]) -> dict:
    """Stop what `path` records: the services (SIGTERM, in parallel; SIGKILL after a grace), then the stack.
    Returns {"services": [...], "stack": [...], "seconds": ...}; removes the state file."""
    from concurrent.futures import ThreadPoolExecutor

    from services.devtools.stack import Stack

    state = read_state(path)
    if state is None:
        raise UpError(f"nothing is up: no {path} (start the system with `whaleid up`)")
    began = time.monotonic()
    stack_dir = Path(state["stack_run_dir"])

    def stop(item) -> str | None:
        name, entry = item
        return name if stop_pid(entry["pid"], service_owner(stack_dir, name), grace=SERVICE_STOP_GRACE_S) else None

    with ThreadPoolExecutor(max_workers=max(1, len(state.get("services", {})))) as pool:
        services = [n for n in pool.map(stop, reversed(list(state.get("services", {}).items()))) if n]
    progress(f"services stopped ({', '.join(services) or 'none was running'}) in {time.monotonic() - began:.1f} s")
    stopped = []
    if (stack_dir / "state.json").exists():
        stopped = Stack.from_state(stack_dir, load_settings(run_dir=stack_dir)).down()
    progress(f"stack stopped ({', '.join(stopped) or 'none was running'})")
    Path(path).unlink(missing_ok=True)
    return {"services": services, "stack": stopped, "seconds": round(time.monotonic() - began, 2)}


__all__ = ["STATE_FILE", "SERVICES", "System", "UpError", "check_not_up", "live_services", "read_state",
           "review_url", "stop_recorded", "up_state_path"]
