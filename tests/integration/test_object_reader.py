"""The worker's S3 reads (services.chain.worker.storage.ObjectReader: the worker's own SigV4 signing + aiohttp on
the event loop, not boto3's get_object) against the real servers: SeaweedFS (the session stack) and moto (the AWS
path). The same bytes as boto3 for keys that need quoting, also for a batch of GETs at once on one loop over
kept-alive connections (`fetch_async`, the worker's path); each refusal with its reason, the same from `fetch` and
`fetch_async`; an S3 that does not answer or drops its connections is transient (the worker retries), never a dead
letter."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading

import pytest

from services.chain.failures import PermanentFailure, TransientFailure
from services.chain.worker.storage import RETRIES, ObjectReader

KEYS = ["uploads/plain.jpg", "uploads/with space/and+plus.jpg", "uploads/ünï-cødé/(1)=~!.jpg"]


@pytest.fixture(params=["seaweedfs", "moto"])
def s3_settings(request):
    running = request.getfixturevalue("stack" if request.param == "seaweedfs" else "moto_stack")
    return running.settings


def _boto3(settings):
    from services.curation.operations.gallery_versions import s3_client

    return s3_client(settings)


def test_the_signed_get_reads_what_boto3_reads(s3_settings):
    client, reader = _boto3(s3_settings), ObjectReader(s3_settings)
    bucket = s3_settings.sightings_bucket
    for n, key in enumerate(KEYS):
        body = bytes([n]) * (1000 + n) + key.encode()
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="image/jpeg")
        assert reader.fetch(bucket, key, 10_000) == body == client.get_object(Bucket=bucket, Key=key)["Body"].read()
    for _ in range(20):  # connections are reused from the pool
        assert reader.fetch(bucket, KEYS[0], 10_000).endswith(KEYS[0].encode())


def test_each_refusal_has_its_reason(s3_settings):
    client, reader = _boto3(s3_settings), ObjectReader(s3_settings)
    bucket = s3_settings.sightings_bucket
    client.put_object(Bucket=bucket, Key="uploads/page.html", Body=b"<html>", ContentType="text/html")
    client.put_object(Bucket=bucket, Key="uploads/big.jpg", Body=b"x" * 5000, ContentType="image/jpeg")
    cases = {("uploads/never-uploaded.jpg", 10_000): "missing_object",
             ("uploads/page.html", 10_000): "wrong_content_type",
             ("uploads/big.jpg", 4999): "too_large"}
    for (key, limit), reason in cases.items():
        with pytest.raises(PermanentFailure) as info:
            reader.fetch(bucket, key, limit)
        assert info.value.reason == reason, (key, info.value)
    assert len(reader.fetch(bucket, "uploads/big.jpg", 5000)) == 5000


def test_wrong_credentials_are_refused_as_boto3_is_refused(s3_settings):
    """Where the server checks signatures (SeaweedFS with the stack's identities), a wrong secret is
    `unreadable_object` as boto3 gets AccessDenied; where it does not (moto), both read the object."""
    from botocore.exceptions import ClientError

    bucket = s3_settings.sightings_bucket
    _boto3(s3_settings).put_object(Bucket=bucket, Key=KEYS[0], Body=b"photo", ContentType="image/jpeg")
    wrong = dataclasses.replace(s3_settings, aws_secret_access_key="not-the-secret")
    try:
        _boto3(wrong).get_object(Bucket=bucket, Key=KEYS[0])["Body"].read()
        boto3_refused = False
    except ClientError as exc:
        boto3_refused = exc.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    if boto3_refused:
        with pytest.raises(PermanentFailure, match="access denied") as info:
            ObjectReader(wrong).fetch(bucket, KEYS[0], 10_000)
        assert info.value.reason == "unreadable_object"
    else:
        assert ObjectReader(wrong).fetch(bucket, KEYS[0], 10_000) == b"photo"


def test_an_s3_that_does_not_answer_is_transient():
    from services.core.settings import load_settings
    from services.devtools.stack.ports import free_port

    settings = load_settings(profile="local", environ={}, s3_endpoint=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientFailure, match="S3 unavailable reading s3://b/k.jpg"):
        ObjectReader(settings).fetch("b", "k.jpg", 10)


def test_aws_is_read_virtual_hosted():
    from services.core.settings import load_settings

    settings = load_settings(profile="local", environ={}, s3_endpoint="", s3_region="eu-west-1")
    reader = ObjectReader(settings)
    assert reader.url("whaleid-sightings", "uploads/a b.jpg") == \
        "https://whaleid-sightings.s3.eu-west-1.amazonaws.com/uploads/a%20b.jpg"


def test_a_batch_of_gets_on_one_loop_reads_what_boto3_reads(s3_settings):
    client, reader = _boto3(s3_settings), ObjectReader(s3_settings)
    bucket = s3_settings.sightings_bucket
    bodies = {}
    for n, key in enumerate(KEYS):
        bodies[key] = bytes([n]) * (1000 + n) + key.encode()
        client.put_object(Bucket=bucket, Key=key, Body=bodies[key], ContentType="image/jpeg")

    async def batches():
        read = []
        for _ in range(5):  # the same pool from batch to batch
            read.append(await asyncio.gather(*(reader.fetch_async(bucket, key, 10_000) for key in KEYS * 4)))
        session = reader._loop_session()
        await reader.close()
        return read, session

    read, session = asyncio.run(batches())
    for batch in read:
        assert batch == [bodies[key] for key in KEYS * 4]
    assert session.closed
    assert [client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in KEYS] == [bodies[k] for k in KEYS]


def test_each_refusal_has_the_reason_of_the_synchronous_fetch(s3_settings):
    client, reader = _boto3(s3_settings), ObjectReader(s3_settings)
    bucket = s3_settings.sightings_bucket
    client.put_object(Bucket=bucket, Key="uploads/page.html", Body=b"<html>", ContentType="text/html")
    client.put_object(Bucket=bucket, Key="uploads/big.jpg", Body=b"x" * 5000, ContentType="image/jpeg")
    cases = {("uploads/never-uploaded.jpg", 10_000): "missing_object",
             ("uploads/page.html", 10_000): "wrong_content_type",
             ("uploads/big.jpg", 4999): "too_large"}

    async def refusals():
        reasons = {}
        for (key, limit), _ in cases.items():
            try:
                await reader.fetch_async(bucket, key, limit)
                reasons[key] = None
            except PermanentFailure as exc:
                reasons[key] = exc.reason
        assert len(await reader.fetch_async(bucket, "uploads/big.jpg", 5000)) == 5000  # after the refusals
        await reader.close()
        return reasons

    assert asyncio.run(refusals()) == {key: reason for (key, _), reason in cases.items()}
    for (key, limit), reason in cases.items():
        with pytest.raises(PermanentFailure) as info:
            reader.fetch(bucket, key, limit)
        assert info.value.reason == reason


def test_an_s3_that_does_not_answer_on_the_loop_is_transient():
    from services.core.settings import load_settings
    from services.devtools.stack.ports import free_port

    settings = load_settings(profile="local", environ={}, s3_endpoint=f"http://127.0.0.1:{free_port()}")
    reader = ObjectReader(settings)

    async def fetch():
        try:
            return await reader.fetch_async("b", "k.jpg", 10)
        finally:
            await reader.close()

    with pytest.raises(TransientFailure, match="S3 unavailable reading s3://b/k.jpg"):
        asyncio.run(fetch())


def test_a_server_that_drops_each_connection_is_tried_again_then_transient():
    """A real socket server that accepts and closes at once: the GET is tried 1 + RETRIES times (each try sent
    twice: aiohttp repeats at once a GET whose connection the server dropped), then transient."""
    from services.core.settings import load_settings

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []

    def serve():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(connection)
            connection.recv(65536)
            connection.close()

    threading.Thread(target=serve, daemon=True).start()
    settings = load_settings(profile="local", environ={},
                             s3_endpoint=f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        with pytest.raises(TransientFailure, match="S3 unavailable reading s3://b/k.jpg"):
            ObjectReader(settings).fetch("b", "k.jpg", 10)
    finally:
        listener.close()
    assert len(accepted) == 2 * (1 + RETRIES)
