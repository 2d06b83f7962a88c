"""What every managed server shares: start its process, wait until a real protocol round trip succeeds, stop."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from services.core.errors import ServerStartError
from services.devtools.stack.process import ServerProcess

log = logging.getLogger(__name__)


class ManagedServer:
    """Subclasses set `name`, build `argv()` (and `env()`), implement `check()` (raise when not healthy) and
    `entry()` (the addresses recorded in the state file); `provision()` runs once after it is healthy."""

    name = "server"
    after: tuple[str, ...] = ()  # servers of the same stack that must be healthy before this one starts
    stop_grace_s: float | None = None  # seconds between SIGTERM and SIGKILL (None: process.GRACE_S)

    def __init__(self, log_dir: Path, owner: str) -> None:
        self.log_dir = Path(log_dir)
        self.log_path = self.log_dir / f"{self.name}.log"
        self.owner = owner
        self.process: ServerProcess | None = None
        self.started_at = 0.0
        self.ready_s: float | None = None  # seconds from start to the first healthy check

    # --- to implement
    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {}

    def check(self) -> None:
        """One real protocol round trip; raises any exception when the server is not (yet) healthy."""
        raise NotImplementedError

    def entry(self) -> dict[str, Any]:
        raise NotImplementedError

    def provision(self) -> None:
        """Create what the stack needs inside the server (buckets, queues); runs once it is healthy."""

    # --- shared
    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.process.pid

    def start(self) -> "ManagedServer":
        self.process = ServerProcess(self.name, self.argv(), self.log_path, owner=self.owner, env=self.env())
        self.started_at = time.monotonic()
        self.process.start()
        return self

    def poll_healthy(self) -> bool:
        """One attempt: True when healthy; raises ServerStartError when the process has exited."""
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        if not self.process.alive():
            raise ServerStartError(
                self.name, f"the process exited with code {self.process.exit_code()}", self.process.log_tail()
            )
        try:
            self.check()
        except Exception as exc:  # noqa: BLE001 - any failure of the round trip means "not yet"
            self._last_error = f"{type(exc).__name__}: {exc}"
            return False
        if self.ready_s is None:
            self.ready_s = time.monotonic() - self.started_at
            log.info("%s healthy after %.2f s (pid %d)", self.name, self.ready_s, self.pid)
        return True

    def deadline_error(self, timeout: float) -> ServerStartError:
        last = getattr(self, "_last_error", "no answer")
        return ServerStartError(
            self.name, f"not healthy after {timeout:.0f} s (last check: {last})", self.process.log_tail()
        )

    def wait_healthy(self, timeout: float = 60.0) -> "ManagedServer":
        deadline = time.monotonic() + timeout
        while not self.poll_healthy():
            if time.monotonic() > deadline:
                raise self.deadline_error(timeout)
            time.sleep(0.1)
        return self

    def healthy(self) -> bool:
        try:
            self.check()
            return True
        except Exception:  # noqa: BLE001
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(**({"grace": self.stop_grace_s} if self.stop_grace_s is not None else {}))

    def log_tail(self, lines: int = 25) -> str:
        return self.process.log_tail(lines) if self.process else ""

    def __enter__(self) -> "ManagedServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
