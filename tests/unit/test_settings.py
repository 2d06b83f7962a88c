"""Settings layering (defaults < profile < TOML file < WHALEID_* env < keyword overrides; the local profile fills
still-empty addresses from the stack's state file) and clear errors for values that cannot be read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.core.errors import ConfigError
from services.core.settings import Settings, describe_settings, load_settings


def write_state(run_dir: Path, **servers) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "state.json").write_text(
        json.dumps({"run_dir": str(run_dir), "started_at": 0.0, "servers": servers})
    )


def test_defaults_then_profile():
    production = load_settings(profile="production", environ={})
    local = load_settings(profile="local", environ={})
    assert production.faust_broker_session_timeout == Settings.faust_broker_session_timeout == 60.0
    assert production.faust_producer_max_batch_size == 16384 and production.aws_access_key_id == ""
    # the local profile carries the Tansu/Faust workarounds and moto's dummy credentials
    assert local.faust_broker_session_timeout == 6.0 and local.faust_producer_max_batch_size == 16384
    assert local.aws_access_key_id == "testing"
    assert load_settings(environ={"WHALEID_PROFILE": "production"}).profile == "production"


def test_file_beats_profile_env_beats_file_keywords_beat_env(tmp_path):
    config = tmp_path / "whaleid.toml"
    config.write_text(
        'faust_broker_session_timeout = 8.0\ngateway_port = 9000\nsightings_bucket = "from-file"\n'
    )
    from_file = load_settings(profile="local", environ={"WHALEID_CONFIG": str(config)})
    assert (from_file.faust_broker_session_timeout, from_file.gateway_port) == (8.0, 9000)
    assert from_file.faust_fetch_max_wait_ms == 100  # untouched profile value stays

    env = {
        "WHALEID_CONFIG": str(config),
        "WHALEID_GATEWAY_PORT": "9100",
        "WHALEID_FAUST_BROKER_SESSION_TIMEOUT": "5",
    }
    from_env = load_settings(profile="local", environ=env)
    assert from_env.gateway_port == 9100 and isinstance(from_env.gateway_port, int)
    assert from_env.faust_broker_session_timeout == 5.0 and isinstance(
        from_env.faust_broker_session_timeout, float
    )
    assert from_env.sightings_bucket == "from-file"

    keywords = load_settings(profile="local", environ=env, gateway_port=9200)
    assert keywords.gateway_port == 9200
    assert load_settings(config_file=config, environ={}).gateway_port == 9000  # the file as an argument


def test_local_profile_fills_empty_addresses_from_the_state_file(tmp_path):
    run_dir = tmp_path / "run"
    write_state(
        run_dir,
        kafka={"bootstrap": "127.0.0.1:1111", "pid": 1, "log": "k"},
        s3={"endpoint": "http://127.0.0.1:2222", "upload_events_queue_url": "q", "pid": 2, "log": "s"},
        redis={"url": "redis://127.0.0.1:3333/0", "pid": 3, "log": "r"},
        triton={"grpc": "127.0.0.1:4444", "http": "127.0.0.1:5555", "metrics": "127.0.0.1:6666",
                "model_repository": "m", "pid": 4, "log": "t"},
    )  # fmt: skip
    env = {"WHALEID_RUN_DIR": str(run_dir), "WHALEID_REDIS_URL": "redis://elsewhere:6379/1"}
    local = load_settings(profile="local", environ=env)
    assert local.kafka_bootstrap == "127.0.0.1:1111"
    assert local.s3_endpoint == "http://127.0.0.1:2222"
    assert (local.triton_grpc_url, local.triton_http_url) == ("127.0.0.1:4444", "127.0.0.1:5555")
    assert local.redis_url == "redis://elsewhere:6379/1"  # an address set explicitly is kept
    assert local.prometheus_url == ""  # not in the state: stays empty

    production = load_settings(profile="production", environ=env)
    assert production.kafka_bootstrap == "" and production.redis_url == "redis://elsewhere:6379/1"


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"WHALEID_GATEWAY_PORT": "eighty"}, ["gateway_port", "'eighty'", "int"]),
        ({"WHALEID_TRITON_TIMEOUT_S": "soon"}, ["triton_timeout_s", "float"]),
        ({"WHALEID_PROFILE": "staging"}, ["unknown profile", "staging", "production"]),
    ],
    ids=["int", "float", "profile"],
)
def test_values_that_cannot_be_read_are_config_errors(environ, words):
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ)
    assert all(word in str(info.value) for word in words), str(info.value)


def test_bad_files_are_config_errors_naming_the_file(tmp_path):
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("kafka_bootstrapp = 'typo:9092'\n")
    with pytest.raises(ConfigError, match="unknown setting 'kafka_bootstrapp'"):
        load_settings(config_file=unknown, environ={})

    broken = tmp_path / "broken.toml"
    broken.write_text("gateway_port = = 1\n")
    with pytest.raises(ConfigError, match="broken.toml"):
        load_settings(config_file=broken, environ={})
    with pytest.raises(ConfigError, match="missing.toml"):
        load_settings(config_file=tmp_path / "missing.toml", environ={})

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "state.json").write_text("{not json")
    with pytest.raises(ConfigError, match="state file"):
        load_settings(profile="local", environ={}, run_dir=run_dir)


def test_with_overrides_coerces_and_rejects_unknown_names():
    settings = load_settings(environ={}).with_overrides(gateway_port="8181", run_dir="/tmp/x")
    assert settings.gateway_port == 8181 and settings.run_dir == Path("/tmp/x")
    with pytest.raises(ConfigError, match="unknown setting"):
        settings.with_overrides(no_such_setting=1)


def test_every_setting_has_an_environment_variable():
    described = {name: env for name, env, _ in describe_settings()}
    assert described["kafka_bootstrap"] == "WHALEID_KAFKA_BOOTSTRAP"
    assert set(described) == set(Settings.__dataclass_fields__)
