"""Health checks: one real protocol round trip per server; each raises when the server is not healthy."""

from __future__ import annotations

import urllib.request
from typing import Any, Callable, Mapping

TIMEOUT_S = 2.0


def check_kafka(bootstrap: str) -> None:
    """Bootstrap a kafka-python admin client and list the topics (ApiVersions + Metadata requests). A broker
    that does not accept connections yet is reported without the client (which logs each refusal as an ERROR)."""
    import socket

    from kafka import KafkaAdminClient

    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    socket.create_connection((host or "127.0.0.1", int(port)), timeout=TIMEOUT_S).close()

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="whaleid-stack-health",
        request_timeout_ms=int(TIMEOUT_S * 1000),
        bootstrap_timeout_ms=int(TIMEOUT_S * 1000),
    )
    try:
        admin.list_topics()
    finally:
        admin.close()


def s3_client(endpoint: str, region: str = "us-east-1", key: str = "testing", secret: str = "testing"):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S, retries={"max_attempts": 1}),
    )


def check_s3(endpoint: str, **credentials: str) -> None:
    """ListBuckets against the endpoint."""
    s3_client(endpoint, **credentials).list_buckets()


def check_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
    try:
        if not client.ping():
            raise ConnectionError(f"redis at {url} did not answer PING")
    finally:
        client.close()


def check_triton(http: str) -> None:
    """GET /v2/health/ready through tritonclient's HTTP client."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)
    try:
        if not client.is_server_ready():
            raise ConnectionError(f"triton at {http} is up but not ready")
    finally:
        client.close()


def check_prometheus(url: str) -> None:
    with urllib.request.urlopen(url.rstrip("/") + "/-/ready", timeout=TIMEOUT_S) as response:
        if response.status != 200:
            raise ConnectionError(f"prometheus at {url} answered {response.status}")


SEAWEEDFS_HEALTH_BODY = b"whaleid stack health check\n"  # the object SeaweedFS's health check reads


def check_seaweedfs(endpoint: str, health_object: str, **credentials: str) -> None:
    """GET the health object (`bucket/key`): raises until SeaweedFS serves reads."""
    bucket, _, key = health_object.partition("/")
    body = s3_client(endpoint, **credentials).get_object(Bucket=bucket, Key=key)["Body"].read()
    if body != SEAWEEDFS_HEALTH_BODY:
        raise ConnectionError(f"seaweedfs at {endpoint} returned {len(body)} unexpected bytes for {health_object}")


def import_clients() -> None:
    """Import the client libraries up front, so the first checks time the servers, not the imports."""
    import boto3  # noqa: F401
    import kafka  # noqa: F401
    import redis  # noqa: F401
    import tritonclient.http  # noqa: F401


def _check_s3_entry(entry: Mapping[str, Any]) -> None:
    """moto: ListBuckets; SeaweedFS: a read of its health object (it lists buckets before it serves reads)."""
    if "health_object" in entry:  # SeaweedFS's entry (moto's is the documented endpoint + queue URL)
        check_seaweedfs(entry["endpoint"], entry["health_object"])
    else:
        check_s3(entry["endpoint"])


# server name -> check of its state-file entry
CHECKS: dict[str, Callable[[Mapping[str, Any]], None]] = {
    "kafka": lambda e: check_kafka(e["bootstrap"]),
    "s3": lambda e: _check_s3_entry(e),
    "redis": lambda e: check_redis(e["url"]),
    "triton": lambda e: check_triton(e["http"]),
    "prometheus": lambda e: check_prometheus(e["url"]),
}
