"""The bridge's connections: the SQS upload-event queue and an acks=all Kafka producer."""

from __future__ import annotations

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from services.chain.kafka_producers import acks_all_producer, kafka_options
from services.core.errors import WhaleIdError
from services.core.settings import Settings


class BridgeUnavailable(WhaleIdError):
    """A server the bridge needs at start (SQS queue, Kafka) cannot be reached."""


def sqs_client(settings: Settings):
    endpoint = settings.upload_events_endpoint or settings.s3_endpoint or None
    return boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name=settings.s3_region,
        aws_access_key_id=settings.aws_access_key_id or None,
        aws_secret_access_key=settings.aws_secret_access_key or None,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=3,
                      read_timeout=settings.bridge_poll_wait_s + 10),
    )


def upload_queue_url(sqs, settings: Settings) -> str:
    try:
        return sqs.get_queue_url(QueueName=settings.upload_events_queue)["QueueUrl"]
    except (BotoCoreError, ClientError) as exc:
        raise BridgeUnavailable(
            f"cannot find the upload-event queue {settings.upload_events_queue!r} at "
            f"{settings.upload_events_endpoint or settings.s3_endpoint or 'AWS'}: {exc} "
            "(start the stack with `whaleid stack up`, or set WHALEID_UPLOAD_EVENTS_QUEUE)"
        ) from None


def kafka_producer(settings: Settings):
    """kafka-python producer: acks=all, idempotent where `bridge_producer_idempotence` says so (the broker drops
    duplicates of the producer's own retries; off in the local profile, docs/interfaces.md); the bridge flushes
    before deleting a message. Replaced after a failed record (services.chain.kafka_producers: a broker restart
    breaks its session)."""
    from kafka.errors import KafkaError

    try:
        return acks_all_producer(settings, "whaleid-bridge")
    except KafkaError as exc:
        raise BridgeUnavailable(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from None


def seaweedfs_events_consumer(settings: Settings):
    """kafka-python consumer of SeaweedFS's filer events (`upload_events_topic`) in group `bridge_events_group`:
    offsets committed by the bridge after each batch (never automatically), a new group starting at the earliest
    record (events published before the bridge first ran are not skipped), the session timeout and heartbeat of
    the Faust consumers (the local profile's short ones make Tansu's group join quick), and their fetch wait.
    With `bridge_group_instance_id` it is a static member: a bridge restarted after a SIGKILL takes the killed one's
    place in one join, where a new dynamic member waits until the killed one's session expires and the group
    rebalances again (tests/integration/test_bridge_membership.py; Tansu holds that one join for about half the
    session timeout, a Kafka broker answers it at once)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        return KafkaConsumer(
            settings.upload_events_topic,
            **kafka_options(settings),
            client_id="whaleid-bridge-seaweedfs",
            group_id=settings.bridge_events_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(settings.faust_broker_session_timeout * 1000),
            heartbeat_interval_ms=int(settings.faust_broker_heartbeat_interval * 1000),
            fetch_max_wait_ms=settings.faust_fetch_max_wait_ms or 500,  # Tansu answers a fetch when it expires
            group_instance_id=settings.bridge_group_instance_id or None,
        )
    except KafkaError as exc:
        raise BridgeUnavailable(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from None
