"""The worker's SigV4 GET signer (services/chain/worker/storage.py) writes exactly the headers botocore's
S3SigV4Auth writes for the same URL, credentials and instant."""

from __future__ import annotations

import datetime
from unittest import mock

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from services.chain.worker.storage import SigV4Keys, sigv4_get_headers

NOW = 1764980000.5


def botocore_headers(url: str, token: str | None, region: str, now: float) -> dict[str, str]:
    request = AWSRequest(method="GET", url=url)
    instant = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=instant):
        S3SigV4Auth(Credentials("AKIDEXAMPLE", "wJalr/SECRET+key", token).get_frozen_credentials(), "s3",
                    region).add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize("url, token, region", [
    ("http://127.0.0.1:37321/sightings/2026/a%20b/c~d.jpg", None, "us-east-1"),  # path-style, a port, quoted key
    ("https://bucket.s3.eu-west-1.amazonaws.com/x/y.jpg", "SESSION/TOKEN==", "eu-west-1"),  # temporary credentials
    ("http://localhost:80/sightings/k", None, "us-east-1"),  # the scheme's default port is left out of host
    ("https://[::1]:9000/sightings/k.png", None, "us-east-1"),  # IPv6 host
])
def test_headers_equal_botocore_s3_sigv4(url, token, region):
    keys = SigV4Keys()
    ours = sigv4_get_headers(url, "AKIDEXAMPLE", "wJalr/SECRET+key", token, region, keys, now=NOW)
    assert ours == botocore_headers(url, token, region, NOW)
    # the cached day key signs the next request of the same day the same way; a new day derives a new key
    later = NOW + 3600
    assert sigv4_get_headers(url, "AKIDEXAMPLE", "wJalr/SECRET+key", token, region, keys, now=later) == \
        botocore_headers(url, token, region, later)
    next_day = NOW + 86400
    assert sigv4_get_headers(url, "AKIDEXAMPLE", "wJalr/SECRET+key", token, region, keys, now=next_day) == \
        botocore_headers(url, token, region, next_day)


def test_another_secret_gives_another_signature():
    keys = SigV4Keys()
    url = "http://127.0.0.1:1/sightings/k"
    first = sigv4_get_headers(url, "A", "secret-1", None, "us-east-1", keys, now=NOW)["Authorization"]
    second = sigv4_get_headers(url, "A", "secret-2", None, "us-east-1", keys, now=NOW)["Authorization"]
    assert first != second
