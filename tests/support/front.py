"""Helpers for the front of the chain (gateway + bridge) tests: real servers, real processes, a topic reader."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import boto3
import redis
import requests
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from services.core.settings import Settings
from services.core.topics import ALL_TOPICS
from services.devtools.demo.processes import ServiceProcess
from services.devtools.stack.ports import free_port

REPO = Path(__file__).resolve().parents[2]
TOKEN = "front-test-token"  # the app named `app` (gateway_token)
OTHER_APP_TOKEN = "front-other-app-token"  # the app named `other-app`
RESEARCHER_TOKEN = "front-researcher-token"  # the researcher `dr-fluke`
SECOND_RESEARCHER_TOKEN = "front-second-researcher-token"  # the researcher `dr-tail`
ADMIN_TOKEN = "front-admin-token"  # the admin `ops-admin`
ROLE_TOKENS = {"gateway_app_tokens": f"other-app={OTHER_APP_TOKEN}",
               "gateway_researcher_tokens": f"dr-fluke={RESEARCHER_TOKEN},dr-tail={SECOND_RESEARCHER_TOKEN}",
               "gateway_admin_tokens": f"ops-admin={ADMIN_TOKEN}"}
MAX_UPLOAD_BYTES = 200_000  # small, so the bridge's size limit is testable with a small upload
JPEG_BYTES = b"\xff\xd8\xff\xe0" + b"fake-jpeg-bytes" * 20  # the front never decodes: the worker does


def front_settings(stack) -> Settings:
    """The session stack's settings with the front's test token and a small upload limit; topics created."""
    settings = stack.settings.with_overrides(gateway_token=TOKEN, max_upload_bytes=MAX_UPLOAD_BYTES, **ROLE_TOKENS)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        missing = set(ALL_TOPICS) - set(admin.list_topics())
        if missing:
            admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1) for topic in missing])
    finally:
        admin.close()
    return settings


def service_env(settings: Settings, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHALEID_")}
    env.update({"WHALEID_PROFILE": "local", "WHALEID_RUN_DIR": str(settings.run_dir),
                "WHALEID_GATEWAY_TOKEN": settings.gateway_token,
                "WHALEID_MAX_UPLOAD_BYTES": str(settings.max_upload_bytes),
                "WHALEID_UPLOAD_SIZE_REQUIRED": str(settings.upload_size_required)})
    env.update({f"WHALEID_{name.upper()}": getattr(settings, name) for name in ROLE_TOKENS})
    env.update({f"WHALEID_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def start_gateway(settings: Settings, log_dir: Path, **extra) -> tuple[ServiceProcess, str]:
    """The gateway as its own process; `extra` settings are passed as WHALEID_* variables."""
    port = free_port()
    gateway = ServiceProcess("gateway", service_env(settings, gateway_port=port, **extra), log_dir,
                             metrics_port=None).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return gateway, url
        except requests.ConnectionError:
            pass
        if gateway.proc.poll() is not None or time.monotonic() > deadline:
            gateway.stop()
            raise AssertionError(f"gateway did not start:\n{gateway.log_text()}")
        time.sleep(0.1)


def start_bridge(settings: Settings, log_dir: Path) -> ServiceProcess:
    metrics_port = free_port()
    env = service_env(settings, metrics_port_base=metrics_port - 1, bridge_poll_wait_s=1)  # bridge = base + 1
    bridge = ServiceProcess("bridge", env, log_dir, metrics_port=None).start()
    bridge.wait_log("bridge: ", timeout=30)
    bridge.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    return bridge


def redis_of(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


def aws(settings: Settings, service: str):
    return boto3.client(service, endpoint_url=settings.s3_endpoint, region_name=settings.s3_region,
                        aws_access_key_id=settings.aws_access_key_id,
                        aws_secret_access_key=settings.aws_secret_access_key)


def sighting_body(**overrides) -> dict:
    body = {"taken_at": "2026-11-20T08:30:00+00:00", "latitude": -33.9, "longitude": 18.4,
            "observer": "app-user-7", "content_type": "image/jpeg"}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create_sighting(gateway_url: str, token: str = TOKEN, **overrides) -> dict:
    response = requests.post(f"{gateway_url}/v1/sightings", json=sighting_body(**overrides),
                             headers=bearer(token), timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def upload(created: dict, data: bytes) -> requests.Response:
    """Send the photo as the gateway said: a PUT with its headers, or a POST form (fields, then the file)."""
    if created["upload_method"] == "POST":
        content_type = created["upload_fields"]["Content-Type"]
        return requests.post(created["upload_url"], data=created["upload_fields"],
                             files={"file": ("photo", data, content_type)}, timeout=10)
    return requests.put(created["upload_url"], data=data, headers=created["upload_headers"], timeout=10)


def sigv4_query_signature_valid(url: str, method: str, headers: dict[str, str], settings: Settings) -> bool:
    """Recompute a presigned URL's SigV4 signature the way S3 checks it (moto_server does not check it)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    params = dict(query)
    unsigned = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "X-Amz-Signature"])))
    signed_names = params["X-Amz-SignedHeaders"].split(";")
    all_headers = {**{k.lower(): v for k, v in headers.items()}, "host": parts.netloc}
    request = AWSRequest(method=method, url=unsigned, headers={k: all_headers.get(k, "") for k in signed_names})
    request.context["timestamp"] = params["X-Amz-Date"]
    credential = params["X-Amz-Credential"].split("/")
    auth = S3SigV4QueryAuth(Credentials(settings.aws_access_key_id, settings.aws_secret_access_key),
                            "s3", credential[2], expires=int(params["X-Amz-Expires"]))
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    return expected == params["X-Amz-Signature"]


class TopicReader:
    """Reads a topic from the beginning (all partitions) and keeps every record seen; tests filter by their ids.

    Reading from the beginning avoids Tansu's ListOffsets quirk (end offsets are wrong when producers batch)."""

    def __init__(self, bootstrap: str, topic: str):
        self.topic = topic
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                      auto_offset_reset="earliest", consumer_timeout_ms=200)
        deadline = time.monotonic() + 20
        partitions = None
        while not partitions and time.monotonic() < deadline:
            partitions = self.consumer.partitions_for_topic(topic)
            if not partitions:
                time.sleep(0.2)
        assert partitions, f"topic {topic} has no partitions"
        self.consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        self.consumer.seek_to_beginning()
        self.records: list[tuple[str, dict]] = []

    def _poll(self) -> None:
        for batch in self.consumer.poll(timeout_ms=200).values():
            for message in batch:
                key = message.key.decode() if message.key else ""
                self.records.append((key, json.loads(message.value)))

    def matching(self, predicate, expected: int, timeout: float = 15.0, settle: float = 1.5) -> list[dict]:
        """Records matching `predicate` once `expected` arrived, after `settle` more seconds (catches extras)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._poll()
            if sum(1 for key, value in self.records if predicate(key, value)) >= expected:
                break
        settle_end = time.monotonic() + settle
        while time.monotonic() < settle_end:
            self._poll()
        return [value for key, value in self.records if predicate(key, value)]

    def close(self) -> None:
        self.consumer.close()
