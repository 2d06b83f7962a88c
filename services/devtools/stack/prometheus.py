"""Prometheus (only when `prometheus` is on PATH): scrapes itself, Triton's metrics port and the file_sd targets
of `scrape_targets`, every second, into a fresh TSDB under the run directory."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from services.core.errors import StackError
from services.devtools.stack.binaries import on_path
from services.devtools.stack.health import check_prometheus
from services.devtools.stack.ports import LOOPBACK
from services.devtools.stack.scrape_targets import targets_dir
from services.devtools.stack.server import ManagedServer

SCRAPE_INTERVAL = "1s"


def prometheus_config(self_address: str, static_jobs: dict[str, str], file_sd_glob: str) -> dict[str, Any]:
    jobs = {"prometheus": self_address, **static_jobs}
    scrape_configs: list[dict[str, Any]] = [
        {"job_name": job, "static_configs": [{"targets": [address]}]} for job, address in jobs.items()
    ]
    scrape_configs.append(
        {"job_name": "services", "file_sd_configs": [{"files": [file_sd_glob], "refresh_interval": "1s"}]}
    )
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "scrape_configs": scrape_configs,
    }


class PrometheusServer(ManagedServer):
    name = "prometheus"

    def __init__(
        self, log_dir: Path, owner: str, port: int, run_dir: Path, static_jobs: dict[str, str]
    ) -> None:
        super().__init__(log_dir, owner)
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}"
        self.home = Path(run_dir) / "prometheus"
        self.targets_dir = targets_dir(run_dir)
        self.static_jobs = dict(static_jobs)

    def argv(self) -> list[str]:
        binary = on_path("prometheus")
        if binary is None:
            raise StackError("prometheus is not on PATH (`make install` installs it on Debian as root)")
        data = self.home / "data"
        shutil.rmtree(data, ignore_errors=True)  # a fresh TSDB every run
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.home / "prometheus.yml"
        config = prometheus_config(
            f"{LOOPBACK}:{self.port}", self.static_jobs, str(self.targets_dir / "*.json")
        )
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return [
            str(binary), f"--config.file={config_path}", f"--storage.tsdb.path={data}",
            f"--web.listen-address={LOOPBACK}:{self.port}", "--storage.tsdb.retention.time=1d",
        ]  # fmt: skip

    def check(self) -> None:
        check_prometheus(self.url)

    def entry(self) -> dict[str, Any]:
        return {"url": self.url}
