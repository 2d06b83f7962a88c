"""Everything one `whaleid chaos` run works on: the embedded stack (Kafka broker, S3, Redis, Triton serving the
probe model), a gallery of probe individuals, the chain's services as processes, a fault proxy in front of S3 for
the services that read photos (worker, reconciler) and another for the gateway, whose presigned upload URLs then
lead the apps' PUTs through it (a full volume refuses them). All on loopback, under `workdir`."""

from __future__ import annotations

import logging
import shutil
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from services.devtools.chaos.probe_model import (
    MODEL_IDS,
    individual_id,
    probe_embedding,
    probe_photo,
    write_probe_repository,
)
from services.devtools.chaos.proxy import FaultProxy
from services.devtools.demo.processes import ServiceProcess, identity_env, service_env

log = logging.getLogger(__name__)

SERVICES = ("worker", "matcher", "bridge", "reconciler", "gateway")  # start order: consumers first
S3_VIA_PROXY = ("worker", "reconciler")  # the services whose S3 reads a scenario can slow down or cut
S3_VIA_UPLOAD_PROXY = ("gateway",)  # presigns the apps' uploads for the upload proxy's address

# Chain settings for a run: short reconciler ages, so a lost event is re-driven within seconds.
CHAIN_SETTINGS = {
    "reconciler_interval_s": 2,
    "reconciler_stale_after_s": 10,
    "reconciler_announce_grace_s": 5,
    "retry_backoff_initial_s": 0.2,
    "retry_backoff_max_s": 2,
    "gateway_app_tokens": "chaos-drip=chaos-drip-token-0000000000000000",  # webhook_slow's second app
}


@dataclass
class ChaosEnvironment:
    workdir: Path
    progress: Callable[[str], None]
    individuals: int = 30
    chain_settings: dict = field(default_factory=dict)

    def __post_init__(self):
        self.workdir = Path(self.workdir).resolve()
        self.stack = None
        self.settings = None
        self.proxy: FaultProxy | None = None
        self.upload_proxy: FaultProxy | None = None
        self.services: dict[str, ServiceProcess] = {}
        self.redis = None
        self.gallery_versions: list[str] = []

    # ------------------------------------------------------------------ up and down
    def start(self) -> "ChaosEnvironment":
        from services.chain.markers import redis_client
        from services.core.settings import load_settings
        from services.devtools.demo.run import free_port_block
        from services.devtools.stack import Stack
        from services.devtools.stack.ports import free_port
        from services.serving.triton_client import EmbeddingClient

        stack_dir = self.stack_dir
        repository = write_probe_repository(self.workdir / "model_repository")
        self.overrides = {"run_dir": stack_dir, "model_repository": repository, "gateway_port": free_port(),
                          "metrics_port_base": free_port_block()}
        self.progress(f"bringing the embedded stack up in {stack_dir}")
        self.stack = Stack(load_settings(profile="local", environ={}, **self.overrides),
                           servers=("kafka", "s3", "redis", "triton"))
        self.stack.up(timeout=180)
        self.settings = load_settings(profile="local", environ={}, **self.overrides)
        s3 = urllib.parse.urlparse(self.settings.s3_endpoint)
        self.proxy = FaultProxy(s3.hostname, s3.port).start()
        self.upload_proxy = FaultProxy(s3.hostname, s3.port).start()
        with EmbeddingClient.from_settings(self.settings) as client:
            client.wait_ready(120)
        self.redis = redis_client(self.settings.redis_url)
        self.publish_gallery(self.individuals)
        for name in SERVICES:
            self.start_service(name)
        for name in SERVICES:
            self.wait_service(name)
        self.progress(f"services ready: {', '.join(SERVICES)} (logs in {self.log_dir})")
        return self

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            try:
                service.stop()
            except Exception as exc:  # noqa: BLE001 - tear everything down regardless
                log.warning("stopping %s: %s", service.name, exc)
        for proxy in (self.proxy, self.upload_proxy):
            if proxy is not None:
                proxy.close()
        self.collect_reconciler_trace()
        if self.stack is not None:
            self.stack.down()

    def collect_reconciler_trace(self) -> None:
        """The reconciler's Kafka trace (written where its stack's logs are, only for passes that could not audit
        a topic: services/chain/reconciler/kafka_trace.py) joins the run's logs."""
        from services.chain.reconciler.kafka_trace import trace_path

        source = trace_path(self.stack_dir)
        for path in sorted(source.parent.glob(source.name + "*")):
            try:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, self.log_dir / path.name)
            except OSError as exc:
                log.warning("copying %s into %s: %s", path, self.log_dir, exc)

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def stack_dir(self) -> Path:
        return self.workdir / "stack"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.settings.gateway_host}:{self.settings.gateway_port}"

    # ------------------------------------------------------------------ services
    def service_env(self, name: str, extra: dict | None = None) -> dict[str, str]:
        settings = {k: str(v) for k, v in self.overrides.items() if k != "run_dir"}
        settings.update({k: str(v) for k, v in {**CHAIN_SETTINGS, **self.chain_settings, **(extra or {})}.items()})
        if name in S3_VIA_PROXY:
            settings["s3_endpoint"] = f"http://{self.proxy.address}"
        if name in S3_VIA_UPLOAD_PROXY:
            settings["s3_endpoint"] = f"http://{self.upload_proxy.address}"
        return {**service_env(self.overrides["run_dir"], **settings), **identity_env(self.overrides["run_dir"], name)}

    def start_service(self, name: str, extra: dict | None = None) -> ServiceProcess:
        """Start `whaleid serve <name>` (`extra`: settings for this service only)."""
        service = ServiceProcess(name, self.service_env(name, extra), self.log_dir, metrics_port=0)
        self.services[name] = service.start()
        return service

    def wait_service(self, name: str, timeout: float = 180.0) -> None:
        if name == "gateway":
            from services.chain.gateway.client import AppClient

            AppClient(self.gateway_url, self.settings.gateway_token).wait_healthy(timeout)
        else:
            self.services[name].wait_ready(timeout)

    def kill_service(self, name: str) -> None:
        self.services[name].kill()

    def restart_service(self, name: str) -> None:
        self.services[name].kill()
        self.services[name].start()
        self.wait_service(name)

    # ------------------------------------------------------------------ gallery
    def publish_gallery(self, individuals: int, references: int = 2) -> str:
        """Embed `references` photos of each probe individual with the probe model, publish them as a gallery
        version and point the matcher at it (the matcher swaps on its next pointer poll)."""
        import tempfile

        import numpy as np

        from services.core.identification import Tuning, build_gallery
        from services.core.imaging import decode_image, encode_png
        from services.curation.operations.gallery_versions import GalleryStore

        ids, images, rows = [], [], []
        for individual in range(individuals):
            for reference in range(references):
                png = encode_png(decode_image(probe_photo(individual, -1 - reference)))
                rows.append(probe_embedding(png))
                ids.append(individual_id(individual))
                images.append(f"{individual_id(individual)}-ref{reference}.png")
        gallery = build_gallery(np.stack(rows), ids, ["probe"] * len(ids), images, model_ids=list(MODEL_IDS))
        store = GalleryStore.from_settings(self.settings)
        with tempfile.TemporaryDirectory() as tmp:
            gallery.save(Path(tmp))
            Tuning(threshold=0.8).save(Path(tmp) / "tuning.json")
            parent = self.gallery_versions[-1] if self.gallery_versions else None
            version = store.publish(Path(tmp), parent=parent, added_sightings=[], individuals=sorted(set(ids)),
                                    size=len(gallery))
        store.set_current(version, "whaleid chaos")
        self.gallery_versions.append(version)
        self.progress(f"gallery {version}: {len(gallery)} embeddings of {individuals} probe individuals")
        return version
