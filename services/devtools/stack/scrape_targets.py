"""Extra Prometheus scrape targets as file_sd JSON files (one per job), which Prometheus re-reads every second.

Services started after the stack (gateway, worker, matcher) register their /metrics address here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from services.core.errors import ConfigError


def targets_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "prometheus" / "targets"


def _target_file(run_dir: Path, job: str) -> Path:
    if not job or not all(c.isalnum() or c in "-_." for c in job):
        raise ConfigError(f"scrape job name {job!r} must be letters, digits, '-', '_' or '.'")
    return targets_dir(run_dir) / f"{job}.json"


def write_target(run_dir: Path, job: str, addresses: str | list[str]) -> Path:
    """Scrape `addresses` ("host:port", /metrics) under the label job=`job`; replaces that job's targets."""
    addresses = [addresses] if isinstance(addresses, str) else list(addresses)
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"scrape target {address!r} for job {job!r} is not host:port")
    path = _target_file(run_dir, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")  # not *.json, so Prometheus never reads a half-written file
    tmp.write_text(json.dumps([{"targets": addresses, "labels": {"job": job}}]))
    os.replace(tmp, path)
    return path


def remove_target(run_dir: Path, job: str) -> None:
    _target_file(run_dir, job).unlink(missing_ok=True)


def read_targets(run_dir: Path) -> dict[str, list[str]]:
    found = {}
    for path in sorted(targets_dir(run_dir).glob("*.json")):
        for group in json.loads(path.read_text()):
            found.setdefault(group["labels"]["job"], []).extend(group["targets"])
    return found
