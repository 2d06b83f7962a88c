"""Closed by default (issue 22, item 4): the worker's and matcher's Faust web pages listen on loopback unless
configured, the matcher's gallery reload needs an admin's token (tests/integration/test_matcher.py drives the real page; here the
gate itself), the local profile's well-known tokens never listen beyond loopback, the gateway's /metrics can have
an address of its own, and the Kafka clients speak TLS when SASL_SSL is configured. No server is needed."""

from __future__ import annotations

import asyncio
import ssl
import urllib.request

import certifi
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.chain import faust_app
from services.chain.gateway import service as gateway_service
from services.chain.gateway.app import build_app
from services.chain.kafka_producers import kafka_options
from services.core.access.admin_gate import AdminGate
from services.core.access.token_policy import is_loopback
from services.core.errors import ConfigError
from services.core.settings import load_settings, redacted_url
from services.devtools.stack.ports import free_port

SAFE = {"gateway_token": "a" * 32, "gateway_admin_tokens": "ops=" + "b" * 32,
        "gateway_researcher_tokens": "ana=" + "c" * 32}


def _settings(tmp_path, profile="production", **overrides):
    base = {"run_dir": tmp_path / "run", "redis_url": "redis://127.0.0.1:1/0", "kafka_bootstrap": "127.0.0.1:1"}
    if profile == "production":
        base.update(SAFE)
    return load_settings(profile=profile, environ={}, **{**base, **overrides})


@pytest.fixture
def restore_faust_patches():
    yield
    faust_app.use_idempotent_producer(False)  # make_app patches aiokafka's producer class; undo it


# --------------------------------------------------------------------------- Faust web pages
@pytest.mark.parametrize("profile", ["production", "local"])
def test_faust_web_pages_listen_on_loopback_unless_configured(tmp_path, profile, restore_faust_patches):
    app = faust_app.make_app(_settings(tmp_path, profile), "matcher", free_port())
    assert app.conf.web_bind == "127.0.0.1"
    opened = faust_app.make_app(_settings(tmp_path, profile, faust_web_host="0.0.0.0"), "worker", free_port())
    assert opened.conf.web_bind == "0.0.0.0"


def test_the_reload_gate_admits_admins_only(tmp_path):
    gate = AdminGate(_settings(tmp_path))
    assert gate.refusal("Bearer " + "b" * 32) is None
    assert gate.refusal(None)[0] == 401 and gate.refusal("Bearer nope")[0] == 401
    assert gate.refusal("Basic " + "b" * 32)[0] == 401
    assert gate.refusal("Bearer " + "c" * 32) == (403, "the researcher 'ana' may not do this: admins only")
    assert AdminGate(_settings(tmp_path, "local")).refusal("Bearer local-admin-token") is None
    # production: a placeholder or local default never authorises, even where the gateway would refuse to start
    placeholder = _settings(tmp_path, gateway_admin_tokens="ops=placeholder-refused-by-the-gateway-a")
    assert AdminGate(placeholder).refusal("Bearer placeholder-refused-by-the-gateway-a")[0] == 401
    none = load_settings(profile="production", environ={}, run_dir=tmp_path)
    assert AdminGate(none).refusal("Bearer anything")[0] == 401


# --------------------------------------------------------------------------- the local profile's tokens
@pytest.mark.parametrize("host", ["0.0.0.0", "", "10.1.2.3", "::", "gateway.example.org"])
def test_local_profile_refuses_to_listen_beyond_loopback_with_its_default_tokens(tmp_path, host):
    with pytest.raises(ConfigError) as refused:
        build_app(_settings(tmp_path, "local", gateway_host=host))
    message = str(refused.value)
    assert "local profile's default tokens" in message and "WHALEID_GATEWAY_ADMIN_TOKENS" in message
    assert "local-admin-token" not in message  # the refusal names settings, never tokens


def test_local_profile_listens_on_loopback_or_with_its_own_tokens(tmp_path):
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert is_loopback(host)
        build_app(_settings(tmp_path, "local", gateway_host=host))
    build_app(_settings(tmp_path, "local", gateway_host="0.0.0.0", **SAFE))
    with pytest.raises(ConfigError, match="WHALEID_GATEWAY_TOKEN"):  # one default left is enough to refuse
        build_app(_settings(tmp_path, "local", gateway_host="0.0.0.0", **{**SAFE, "gateway_token": "local-dev-token"}))


# --------------------------------------------------------------------------- the gateway's /metrics
def _get(app, path: str) -> int:
    async def call():
        async with TestClient(TestServer(app)) as client:
            response = await client.get(path)
            return response.status

    return asyncio.run(call())


def test_gateway_metrics_on_the_api_port_by_default_or_on_their_own_address(tmp_path, monkeypatch):
    assert _get(build_app(_settings(tmp_path)), "/metrics") == 200
    port = free_port()
    settings = _settings(tmp_path, gateway_metrics_port=port, metrics_host="127.0.0.1")
    assert _get(build_app(settings), "/metrics") == 404  # no longer on the API's address

    served = {}
    monkeypatch.setattr(gateway_service.web, "run_app", lambda app, **kw: served.update(kw))
    assert gateway_service.run_gateway(settings) == 0
    assert served["port"] == settings.gateway_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert b"whaleid_" in response.read()


# --------------------------------------------------------------------------- Kafka over TLS
def test_sasl_ssl_speaks_tls_with_the_configured_ca(tmp_path):
    settings = _settings(tmp_path, kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                         kafka_username="whaleid", kafka_password="p" * 20, kafka_ssl_cafile=certifi.where())
    credentials = faust_app._broker_credentials(settings)
    assert credentials.protocol.value == "SASL_SSL" and credentials.mechanism.value == "SCRAM-SHA-512"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    assert credentials.ssl_context.verify_mode == ssl.CERT_REQUIRED and credentials.ssl_context.check_hostname
    options = kafka_options(settings)
    assert options["security_protocol"] == "SASL_SSL" and options["ssl_cafile"] == certifi.where()
    plain = faust_app._broker_credentials(settings.with_overrides(kafka_security_protocol="SASL_PLAINTEXT"))
    assert plain.protocol.value == "SASL_PLAINTEXT" and plain.ssl_context is None


def test_redis_password_goes_into_the_url_once(tmp_path):
    settings = _settings(tmp_path, redis_url="redis://redis:6379/0", redis_password="s3cret/+@")
    assert settings.redis_url == "redis://:s3cret%2F%2B%40@redis:6379/0"
    import redis

    assert redis.Redis.from_url(settings.redis_url).connection_pool.connection_kwargs["password"] == "s3cret/+@"
    with pytest.raises(ConfigError, match="in one place"):
        _settings(tmp_path, redis_url="redis://:other@redis:6379/0", redis_password="x")
    assert redacted_url(settings.redis_url) == "redis://:***@redis:6379/0"
    assert redacted_url("redis://redis:6379/0") == "redis://redis:6379/0"
    build_app(settings)
    with pytest.raises(ConfigError, match="WHALEID_REDIS_PASSWORD"):  # the manifests' placeholder is refused
        build_app(_settings(tmp_path, redis_password="placeholder-set-a-redis-password"))
