"""One typed settings object for every service and command.

Layers, later wins:
  1. the defaults below (dataclass fields);
  2. the profile's overrides (`local`: the embedded stack with the Tansu/Faust workarounds; `production`: real
     Kafka/S3/Triton/Redis, Faust's own defaults);
  3. an optional TOML file (`WHALEID_CONFIG=path`, or `load_settings(config_file=...)`), flat keys = field names;
  4. environment variables `WHALEID_<FIELD>` (upper case), e.g. `WHALEID_KAFKA_BOOTSTRAP=host:9092`;
  5. local profile only: server addresses still empty are read from the embedded stack's state file
     (`<run_dir>/state.json`, written by `whaleid stack up`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from services.core.errors import ConfigError

ENV_PREFIX = "WHALEID_"
PROFILES = ("local", "production")


@dataclass(frozen=True)
class Settings:
    # --- which set of defaults
    profile: str = "local"  # local (embedded stack, Tansu workarounds) | production
    # --- embedded stack (local profile)
    run_dir: Path = Path(".whaleid/stack")  # state file, logs and data of `whaleid stack`
    model_repository: Path = Path(".whaleid/model_repository")  # Triton model repository served by the stack
    # --- Kafka
    kafka_bootstrap: str = ""  # host:port[,host:port]
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    kafka_sasl_mechanism: str = ""  # e.g. SCRAM-SHA-512
    kafka_username: str = ""  # SASL user (production)
    kafka_password: str = field(default="", repr=False)  # SASL password (production)
    kafka_ssl_cafile: str = ""  # PEM file of the CA that signed the brokers' certificates (SSL, SASL_SSL; e.g. Strimzi's cluster CA); empty: the system's CAs
    # --- S3 (sightings and the model store) and the upload-event queue
    s3_endpoint: str = ""  # empty: the AWS default endpoint
    s3_region: str = "us-east-1"  # region of the buckets and the queue
    aws_access_key_id: str = ""  # empty: boto3's default credential chain
    aws_secret_access_key: str = field(default="", repr=False)  # with aws_access_key_id
    sightings_bucket: str = "whaleid-sightings"  # uploaded photos (uploads/<sighting_id>.<ext>)
    models_bucket: str = "whaleid-models"  # the model store: galleries, tuning, model repositories
    upload_events_queue: str = "whaleid-upload-events"  # SQS queue receiving the bucket's event notifications
    # --- Redis
    redis_url: str = ""  # redis://host:port/0
    redis_password: str = field(default="", repr=False)  # Redis AUTH password, added to redis_url (which then must not carry one)
    # --- Triton
    triton_grpc_url: str = ""  # host:port
    triton_http_url: str = ""  # host:port
    triton_model: str = "ensemble"  # the ensemble the worker calls
    triton_timeout_s: float = 10.0  # per Triton request
    # --- Prometheus (only for the embedded stack and tests; services expose /metrics themselves)
    prometheus_url: str = ""  # http://host:port of Prometheus (filled from the stack state locally)
    # --- Faust (Tansu needs short sessions and a short fetch wait; production uses Faust's defaults)
    faust_broker_session_timeout: float = 60.0  # Faust consumer session timeout (s)
    faust_broker_heartbeat_interval: float = 3.0  # Faust consumer heartbeat (s)
    faust_producer_max_batch_size: int = 16384  # Faust producer batch size (bytes); batches on Tansu too (only its ListOffsets is short, see docs/chain.md)
    faust_store: str = "memory://"  # Faust table store (rocksdb:// in production if installed)
    faust_web_port_base: int = 6066  # Faust web port of the first worker; others add their index
    faust_web_host: str = "127.0.0.1"  # where the worker's and matcher's Faust web pages listen (POST /gallery/reload/ needs an admin token)
    # --- gateway
    gateway_host: str = "127.0.0.1"  # gateway bind address
    gateway_port: int = 8080  # gateway HTTP port
    gateway_token: str = field(default="", repr=False)  # bearer token of the app named `app` (role app)
    gateway_app_tokens: str = field(default="", repr=False)  # more apps, name=token[,name=token]: create sightings, read their own without GPS
    gateway_researcher_tokens: str = field(default="", repr=False)  # name=token[,...]: read every sighting with GPS, confirm as that name
    gateway_admin_tokens: str = field(default="", repr=False)  # name=token[,...]: gallery pointer and rollback (/v1/gallery)
    max_upload_bytes: int = 20 * 1024 * 1024  # largest accepted photo
    upload_size_required: bool = True  # sightings must declare `size`: every upload is then a single-use PUT of that length
    max_image_pixels: int = 40_000_000  # larger images are refused before decoding (bombs)
    upload_url_expires_s: int = 900  # lifetime of a presigned upload URL
    # --- bridge: S3 upload events (SQS) -> Kafka
    upload_events_endpoint: str = ""  # SQS endpoint of the upload-event queue; empty: s3_endpoint (or AWS)
    bridge_poll_wait_s: int = 2  # SQS long-poll wait; also bounds how fast the bridge notices SIGTERM
    bridge_dedupe_ttl_s: int = 7 * 24 * 3600  # how long a produced (key, etag) is remembered against redelivery
    bridge_claim_ttl_s: int = 120  # an in-flight claim on a (key, etag) expires after this (crashed bridge)
    bridge_liveness_ttl_s: float = 10.0  # a bridge's bridge:alive:<owner> key lapses this long after its last refresh (every third of it): a claim whose owner's key is gone (SIGKILLed bridge) is taken over at once
    # --- identification
    gallery_prefix: str = "galleries"  # key prefix of gallery versions in the model store
    metrics_port_base: int = 9400  # /metrics port of the first service; each service adds its offset
    metrics_host: str = "127.0.0.1"  # where /metrics listens; 0.0.0.0 in Kubernetes so Prometheus can scrape
    gateway_metrics_port: int = 0  # 0: the gateway serves /metrics on its API port; else only on metrics_host:this port
    # --- streaming chain: worker and matcher
    worker_batch_size: int = 16  # sightings per Triton call (the worker takes what is waiting, up to this)
    worker_batch_wait_s: float = 0.02  # how long the worker waits to fill a batch
    worker_decode_budget_mb: float = 512  # estimated decode memory (header pixels x bytes) a worker's sightings may hold at once; the rest wait (0: no budget)
    retry_backoff_initial_s: float = 0.2  # first pause after a transient failure (Triton/S3 down); doubles
    retry_backoff_max_s: float = 5.0  # longest pause between retries (retries never give up: nothing is lost)
    triton_detector_model: str = "detector"  # crop detector in the Triton repository, used when it is loaded
    matcher_reload_interval_s: float = 10.0  # how often the matcher polls the gallery `current` pointer
    matcher_species_min_probability: float = 0.5  # model species used for the per-species threshold above this
    rerank_local_features: bool = False  # local-feature re-ranking in the live chain (docs/identification.md): the worker sends the crop's SIFT keypoints, gallery build stores the gallery photos' ones, the matcher fuses inliers with the score
    matcher_search_threads: int = 1  # FAISS (OpenMP) threads of the matcher's searches: 1 costs least CPU per query for batches of up to worker_batch_size on galleries of thousands of rows; 0 = OpenMP's default (every core, or OMP_NUM_THREADS), for galleries of millions of rows where a batch's wait matters (docs/benchmarks.md)
    rerank_workers: int = 1  # threads the matcher's re-ranking matches a batch's (query, gallery photo) pairs with; 1 (sequential) is best with numpy's multi-threaded OpenBLAS, more pay only with OPENBLAS_NUM_THREADS=1 (docs/identification.md)
    faust_fetch_max_wait_ms: int = 0  # consumer fetch wait of the worker/matcher; 0 = Faust's own (1500 ms)
    faust_topic_reset_check_s: float = 5.0  # how often the worker/matcher look for partitions a broker restart emptied (then read them again from the start); 0 = never
    event_loop: str = "uvloop"  # the asyncio event loop of the worker and the matcher (Faust): uvloop (libuv; less CPU per message, docs/benchmarks.md) | asyncio (the standard library's)
    # --- delivery and bounded state
    faust_producer_idempotence: bool = True  # idempotent aiokafka producer in the worker/matcher (Tansu refuses it: off locally)
    bridge_producer_idempotence: bool = True  # idempotent kafka-python producers (bridge, reconciler, gateway confirmations); off locally: after an empty restart Tansu answers UnknownProducerId, which kafka-python retries as retention for its whole delivery timeout
    redis_result_ttl_s: int = 30 * 24 * 3600  # identification:<id> (what apps and confirmations read) expires after this; 0 = never
    redis_embedding_ttl_s: int = 30 * 24 * 3600  # embedding:<id>: a sighting must be confirmed within this to enter a re-index; 0 = never
    redis_marker_ttl_s: int = 30 * 24 * 3600  # embedded:/failure:/announced: markers against re-delivery (keep >= Kafka retention); 0 = never
    redis_stream_maxlen: int = 100_000  # the `identifications` stream is trimmed to about this many entries (XADD MAXLEN ~)
    redis_sighting_ttl_s: int = 30 * 24 * 3600  # sighting:<id> (metadata, owner, upload state) expires this long after its creation; 0 = never
    redis_audit_maxlen: int = 1_000_000  # the global `confirmations:audit` stream is trimmed to about this many entries; 0 = never
    redis_sighting_audit_maxlen: int = 1000  # each sighting's own trail `confirmations:audit:<id>` is trimmed to about this many entries (only sightings that exist get one); 0 = never
    encounter_max_members: int = 200  # sightings one app may send with one `encounter` id; past it POST /v1/sightings answers 409 encounter_full
    sightings_quota_per_minute: int = 600  # sightings one app may create per minute (Redis-counted); past it 429 with Retry-After; 0 = no limit
    sightings_quota_per_day: int = 100_000  # sightings one app may create per UTC day; past it 429 with Retry-After; 0 = no limit
    matcher_parked_retry_interval_s: float = 60.0  # parked sightings (model not in the gallery) are retried this often and on a gallery swap
    matcher_parked_max: int = 100_000  # most sightings parked at once; parking past it drops the oldest (the reconciler re-drives them)
    # --- reconciler: every accepted upload ends identified or dead-lettered
    reconciler_interval_s: float = 10.0  # pause between two passes of `whaleid serve reconciler`
    reconciler_stale_after_s: float = 60.0  # an uploaded sighting without result or failure this long after its upload (or last re-drive) is re-driven
    reconciler_max_redrives: int = 3  # re-drives without a result before the sighting is dead-lettered as `unresolved`
    reconciler_announce_grace_s: float = 30.0  # an identification not announced, or announced but missing from a topic, this long is announced (re-produced) again
    reconciler_unverified_passes_before_reset: int = 3  # passes in a row the topic audit may fail to read back the record before a stored position (the topic's end past it) before it reads the topic again from the beginning, as after a reset; 0 = wait as long as it takes
    reconciler_topic_lookback_s: int = 7 * 24 * 3600  # identifications announced within this are checked against the topics (keep <= the topics' retention)
    # --- gateway API and review page
    gateway_cors_origins: str = ""  # origins (comma-separated, or *) whose browser apps may call the gateway and upload to the sightings bucket; empty: none
    gateway_photo_url_expires_s: int = 300  # lifetime of the presigned GETs of photos in results, listings and the review page
    gateway_list_max_limit: int = 200  # largest `limit` of GET /v1/sightings and of the review queue
    # --- embedded S3 and upload events
    stack_s3: str = "seaweedfs"  # S3 server of `whaleid stack`: seaweedfs (on disk under run_dir; its filer publishes events to Kafka) | moto (in memory; upload events via SQS)
    bridge_source: str = "auto"  # where the bridge reads upload events: sqs (S3 event JSON: AWS S3, moto) | seaweedfs (filer EventNotifications on Kafka) | auto (the embedded stack's S3 server decides, from its state file; without one: sqs)
    upload_events_topic: str = "seaweedfs.events"  # Kafka topic SeaweedFS's filer publishes its events to (bridge_source = seaweedfs)
    bridge_events_group: str = "whaleid-bridge"  # Kafka consumer group of the bridges reading upload_events_topic
    bridge_group_instance_id: str = ""  # static membership of this bridge in bridge_events_group (one value per bridge process; two bridges with one value fence each other): a bridge restarted after a SIGKILL takes the killed one's place in one join instead of waiting out its session and a second rebalance; empty: dynamic membership. `whaleid up`, the demo and chaos give their one bridge a value per stack
    # --- webhooks per app for finished identifications
    webhook_urls: str = ""  # app=https://host/path[,app=...]: where each app's identifications and new individuals are POSTed (apps as the gateway names them); empty: no webhooks
    webhook_secrets: str = field(default="", repr=False)  # app=secret[,app=secret]: each app's HMAC-SHA256 key (X-WhaleId-Signature), at least 16 characters
    webhook_timeout_s: float = 5.0  # timeout of one socket operation of a webhook call (connect, send, read)
    webhook_deadline_s: float = 10.0  # total wall-clock limit of one webhook attempt (connect, request, the answer's status and headers): a receiver that drips bytes is cut here and retried
    webhook_queue_size: int = 100  # deliveries queued in memory per endpoint; past it they wait in Redis (webhooks:retry:<app>)
    webhook_endpoint_concurrency: int = 2  # sender threads per endpoint: a slow receiver holds only its own
    webhook_backlog_max: int = 10000  # deliveries of one app waiting (queued or for a retry); past it a new one is dead-lettered backlog_full
    webhook_allow_private: bool = False  # allow webhook URLs that resolve to loopback, private, link-local or reserved addresses (off: refused, dead-lettered private_address)
    webhook_max_attempts: int = 8  # attempts before a delivery goes to the dead letters (Redis stream webhooks:dead-letter)
    webhook_backoff_initial_s: float = 2.0  # pause after the first failed attempt; doubles each time
    webhook_backoff_max_s: float = 300.0  # longest pause between two attempts (also caps a Retry-After)
    webhooks_group: str = "whaleid-webhooks"  # Kafka consumer group of `whaleid serve webhooks`

    def with_overrides(self, **overrides: Any) -> "Settings":
        return dataclasses.replace(self, **_coerce_all(overrides))


PROFILE_OVERRIDES: dict[str, dict[str, Any]] = {
    "local": {
        "faust_broker_session_timeout": 6.0,
        "faust_broker_heartbeat_interval": 1.0,
        "faust_fetch_max_wait_ms": 100,  # Tansu answers a fetch only when this wait expires (~550 ms per hop at 1500)
        "faust_producer_idempotence": False,  # Tansu 0.6 fails aiokafka's InitProducerId (v0): UNKNOWN error
        "bridge_producer_idempotence": False,  # Tansu restarted empty: kafka-python's retention retry loop (docs/chaos.md)
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "gateway_token": "local-dev-token",
        "gateway_researcher_tokens": "local-researcher=local-researcher-token",
        "gateway_admin_tokens": "local-admin=local-admin-token",
        "upload_size_required": False,  # apps may omit `size`: a size-bounded POST, replayable until it expires
        "sightings_quota_per_minute": 0,  # the demo, the tests and `whaleid chaos` upload fast as one app
        "sightings_quota_per_day": 0,
        "webhook_allow_private": True,  # the tests' and `whaleid chaos`'s receivers are on loopback
    },
    "production": {},
}

# Addresses filled from the embedded stack's state file (local profile only): field -> (server, key).
STATE_ADDRESSES = {
    "kafka_bootstrap": ("kafka", "bootstrap"),
    "s3_endpoint": ("s3", "endpoint"),
    "redis_url": ("redis", "url"),
    "triton_grpc_url": ("triton", "grpc"),
    "triton_http_url": ("triton", "http"),
    "prometheus_url": ("prometheus", "url"),
}


def _field_types() -> dict[str, type]:
    hints = {"str": str, "int": int, "float": float, "bool": bool, "Path": Path}
    return {f.name: hints[str(f.type)] for f in fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    types = _field_types()
    if name not in types:
        raise ConfigError(f"unknown setting {name!r} (known: {', '.join(sorted(types))})")
    kind = types[name]
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is bool:
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name!r}: cannot read {value!r} as {kind.__name__}") from None


def _coerce_all(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _coerce(k, v) for k, v in values.items()}


def read_stack_state(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "state.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the stack state file {path}: {exc}") from None


def load_settings(
    profile: str | None = None,
    config_file: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings from defaults, profile, file, environment and (local) the stack state file."""
    env = os.environ if environ is None else environ
    profile = profile or env.get(ENV_PREFIX + "PROFILE", "local")
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    values: dict[str, Any] = {"profile": profile, **PROFILE_OVERRIDES[profile]}

    config_file = config_file or env.get(ENV_PREFIX + "CONFIG")
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                values.update(tomllib.load(fh))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read settings file {config_file}: {exc}") from None

    known = _field_types()
    for name in known:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = env[key]
    values.update(overrides)
    values.pop("config", None)
    settings = Settings(**_coerce_all(values))

    if settings.profile == "local":
        state = read_stack_state(settings.run_dir)
        if state:
            filled = {}
            for name, (server, key) in STATE_ADDRESSES.items():
                if not getattr(settings, name) and key in state.get("servers", {}).get(server, {}):
                    filled[name] = state["servers"][server][key]
            source = state.get("servers", {}).get("s3", {}).get("bridge_source")
            if settings.bridge_source == "auto" and source:
                filled["bridge_source"] = source  # the stack's S3 server says where its upload events go
            settings = dataclasses.replace(settings, **filled)
    if settings.redis_password:
        settings = dataclasses.replace(settings, redis_url=redis_url_with_password(settings.redis_url,
                                                                                 settings.redis_password))
    return settings


def redacted_url(url: str) -> str:
    """`url` fit for a log line: a password in it replaced by `***`."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def redis_url_with_password(url: str, password: str) -> str:
    """`url` with `password` as its AUTH password; ConfigError when the URL carries a password of its own."""
    from urllib.parse import quote, urlsplit, urlunsplit

    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is not None:
        raise ConfigError("redis_url carries a password and redis_password is set too: set it in one place")
    user = quote(parts.username, safe="") if parts.username else ""
    netloc = f"{user}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


def describe_settings() -> list[tuple[str, str, Any]]:
    """(name, environment variable, default) for every setting; the settings table of docs/configuration.md."""
    return [(f.name, ENV_PREFIX + f.name.upper(), f.default) for f in fields(Settings)]
