"""Chain services as subprocesses (`whaleid serve <service>`), used by the demo, the tests and the benchmark."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.core.errors import WhaleIdError
from services.devtools.stack.ports import free_port

ROOT = Path(__file__).resolve().parents[3]
READY_TEXT = {"worker": "[^Worker]: Ready", "matcher": "[^Worker]: Ready", "bridge": " -> sightings.uploaded (Kafka",
              "reconciler": "reconciler: first pass done"}  # services.chain.reconciler.service.READY_LINE


class ServiceFailed(WhaleIdError):
    """A chain service exited or did not become ready; the message carries its log tail."""


class ServiceProcess:
    """`whaleid serve <service>` in its own process group, its output in `log_dir/<name>.log`."""

    def __init__(self, service: str, env: dict[str, str], log_dir: Path, name: str | None = None,
                 metrics_port: int | None = 0):
        self.service = service
        self.name = name or service
        self.env = env
        self.log_path = Path(log_dir) / f"{self.name}.log"
        self.metrics_port = metrics_port
        self.proc: subprocess.Popen | None = None
        self.web_port = 0
        self._log_offset = 0

    def start(self) -> "ServiceProcess":
        argv = [sys.executable, "-m", "services.cli.main", "serve", self.service]
        if self.service in ("worker", "matcher"):
            self.web_port = free_port()
            argv += ["--web-port", str(self.web_port)]
        if self.service != "gateway" and self.metrics_port is not None:
            argv += ["--metrics-port", str(self.metrics_port)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def restart(self) -> "ServiceProcess":
        return self.start()

    def log_text(self, since_start: bool = False) -> str:
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        return text[self._log_offset:] if since_start else text

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_log(self, text: str, timeout: float = 120.0) -> "ServiceProcess":
        """Wait until `text` appears in this start's log; ServiceFailed (with the log tail) otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text(since_start=True):
                return self
            if not self.running():
                code = self.proc.returncode if self.proc else None
                raise ServiceFailed(f"{self.name} exited with {code}; log {self.log_path}:\n{self.tail()}")
            time.sleep(0.2)
        raise ServiceFailed(f"{self.name} not ready after {timeout:.0f} s; log {self.log_path}:\n{self.tail()}")

    def wait_ready(self, timeout: float = 120.0) -> "ServiceProcess":
        """Worker/matcher: Faust's "Ready" (partitions assigned); bridge: its polling line; gateway: see
        AppClient.wait_healthy."""
        if self.service in READY_TEXT:
            return self.wait_log(READY_TEXT[self.service], timeout)
        return self

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text(since_start=True).splitlines()[-lines:])

    def kill(self) -> None:
        if self.running():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM to its process group, a kill after `timeout`; returns the exit code (None: never started)."""
        if self.proc is None:
            return None
        if self.running():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def service_env(run_dir: Path, **settings) -> dict[str, str]:
    """The environment of a service: this environment without WHALEID_*, the stack's run dir (addresses come
    from its state file) and the given settings as WHALEID_<NAME>."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHALEID_")}
    env.update({"WHALEID_PROFILE": "local", "WHALEID_RUN_DIR": str(run_dir), "PYTHONUNBUFFERED": "1",
                "TF_CPP_MIN_LOG_LEVEL": "2"})
    env.update({f"WHALEID_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def identity_env(run_dir: Path, name: str) -> dict[str, str]:
    """Settings that make a service the one `name` of the stack in `run_dir`: the bridge's static membership in its
    consumer group (`bridge_group_instance_id`), so a restarted bridge takes the killed one's place in one join. Unique
    per stack; a second bridge started by hand on the same stack must not copy it (the two would fence each other)."""
    if name != "bridge":
        return {}
    import hashlib

    stack = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:10]
    return {"WHALEID_BRIDGE_GROUP_INSTANCE_ID": f"whaleid-bridge-{stack}"}
