"""The embedded stack against its real servers: round trips, state file, start failures and a clean `down`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import unquote_plus

import numpy as np
import pytest

from services.core.settings import load_settings
from services.devtools.stack import ServerStartError, Stack, launch_triton
from services.devtools.stack.ports import free_ports, port_in_use
from services.devtools.stack.process import ServerProcess, pid_alive, stop_pid

WHALEID = str(Path(sys.executable).parent / "whaleid")
STATE_KEYS = {
    "kafka": {"bootstrap", "storage", "pid", "log"},
    "s3": {"endpoint", "kind", "bridge_source", "data_dir", "filer", "upload_events_topic", "health_object",
           "grpc_ports", "pid", "log"},  # SeaweedFS, the default S3 server
    "moto": {"endpoint", "kind", "bridge_source", "upload_events_queue_url", "pid", "log"},
    "redis": {"url", "pid", "log"},
    "triton": {"grpc", "http", "metrics", "model_repository", "pid", "log"},
    "prometheus": {"url", "pid", "log"},
}
DOUBLE_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "X", data_type: TYPE_FP32, dims: [ 3 ] }} ]
output [ {{ name: "Y", data_type: TYPE_FP32, dims: [ 3 ] }} ]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
"""
DOUBLE_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", (2 * x).astype(np.float32))]))
        return responses
"""


def write_double_model(repository: Path, name: str) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(DOUBLE_CONFIG.format(name=name))
    (repository / name / "1" / "model.py").write_text(DOUBLE_MODEL)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --------------------------------------------------------------------------- state and settings
def test_state_file_has_the_documented_format_and_settings_read_it(stack):
    state = json.loads((stack.stack.run_dir / "state.json").read_text())
    assert state == stack.state
    assert set(state) == {"run_dir", "started_at", "servers"}
    expected = {name: keys for name, keys in STATE_KEYS.items() if name in state["servers"]}
    assert set(expected) >= {"kafka", "s3", "redis", "triton"}
    assert {name: set(entry) for name, entry in state["servers"].items()} == expected
    for entry in state["servers"].values():
        assert pid_alive(entry["pid"]) and Path(entry["log"]).exists()
    settings = stack.settings
    assert settings.kafka_bootstrap == state["servers"]["kafka"]["bootstrap"]
    assert settings.s3_endpoint == state["servers"]["s3"]["endpoint"]
    assert settings.redis_url == state["servers"]["redis"]["url"]
    assert settings.triton_grpc_url == state["servers"]["triton"]["grpc"]
    assert settings.triton_http_url == state["servers"]["triton"]["http"]
    assert state["servers"]["s3"]["kind"] == "seaweedfs" and state["servers"]["kafka"]["storage"] == "memory"
    assert settings.bridge_source == "seaweedfs"  # `auto`, decided by the stack's S3 server
    report = stack.stack.status()
    assert all(r["healthy"] for r in report.values()), report


def test_the_moto_stack_records_its_sqs_queue_and_the_bridge_follows_it(moto_stack):
    state = moto_stack.state
    assert set(state["servers"]["s3"]) == STATE_KEYS["moto"]
    assert state["servers"]["s3"]["kind"] == "moto" and moto_stack.settings.bridge_source == "sqs"
    exports = "\n".join(moto_stack.stack.env_exports())
    assert "export WHALEID_BRIDGE_SOURCE=sqs" in exports


# --------------------------------------------------------------------------- Kafka
def test_kafka_consumer_group_commits_and_resumes_from_the_committed_offset(stack):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    bootstrap = stack.settings.kafka_bootstrap
    topic, group = f"stack-test-{uuid.uuid4().hex[:8]}", f"stack-test-group-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    assert topic in admin.list_topics()
    admin.close()

    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(10):
        producer.send(topic, key=b"k%d" % i, value=b"message-%d" % i)
    producer.flush()
    producer.close()

    def consumer():  # Tansu: a group join waits half the first member's session timeout, so keep it short
        return KafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
            enable_auto_commit=False, session_timeout_ms=2000, heartbeat_interval_ms=500,
            max_poll_records=5,
        )  # fmt: skip

    def take(c, count: int) -> list[bytes]:
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(got) < count and time.monotonic() < deadline:
            for records in c.poll(timeout_ms=500, max_records=count - len(got)).values():
                got.extend(r.value for r in records)
        return got

    first = consumer()
    assert take(first, 5) == [b"message-%d" % i for i in range(5)]
    first.commit()
    first.close()

    second = consumer()
    assert take(second, 5) == [b"message-%d" % i for i in range(5, 10)]  # resumed after the committed offset
    second.close()


# --------------------------------------------------------------------------- S3 -> SQS
def test_s3_upload_notifies_the_queue_with_the_url_decoded_key(moto_stack):
    """The AWS shape: moto's bucket notification to SQS (the SeaweedFS shape is tests/integration/test_seaweedfs.py)."""
    import boto3

    stack = moto_stack
    s = stack.settings
    client = dict(endpoint_url=s.s3_endpoint, region_name=s.s3_region, aws_access_key_id=s.aws_access_key_id,
                  aws_secret_access_key=s.aws_secret_access_key)  # fmt: skip
    s3, sqs = boto3.client("s3", **client), boto3.client("sqs", **client)
    key = f"uploads/{uuid.uuid4().hex[:6]}/blue whale+fluke (1).jpg"
    s3.put_object(Bucket=s.sightings_bucket, Key=key, Body=b"\xff\xd8 not really a jpeg")
    queue_url = stack.state["servers"]["s3"]["upload_events_queue_url"]
    assert queue_url == sqs.get_queue_url(QueueName=s.upload_events_queue)["QueueUrl"]

    others = []  # receipt handles of other tests' messages, set aside while we look further into the queue

    def our_event():
        # other tests share this queue and may leave many messages in it: hide each one we are not looking for
        # (so the next receive returns the following messages), give them back afterwards, delete only ours
        reply = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=60
        )
        found = None
        for message in reply.get("Messages", []):
            body = json.loads(message["Body"])
            records = [] if body.get("Event") == "s3:TestEvent" else body.get("Records", [])
            ours = [r for r in records if unquote_plus(r["s3"]["object"]["key"]) == key]
            if ours and found is None:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                found = ours[0]
            else:
                others.append(message["ReceiptHandle"])
        return found

    try:
        record = wait_for(our_event, 15, "the S3 event on SQS")
    finally:
        for start in range(0, len(others), 10):
            entries = [{"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
                       for i, h in enumerate(others[start:start + 10])]
            sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
    assert record["eventName"].startswith("ObjectCreated:")
    assert record["s3"]["bucket"]["name"] == s.sightings_bucket
    assert record["s3"]["object"]["key"] != key  # it arrives URL-encoded...
    assert s3.get_object(
        Bucket=s.sightings_bucket, Key=unquote_plus(record["s3"]["object"]["key"])
    )  # ...and decodes


def test_models_bucket_exists(stack):
    import boto3

    s = stack.settings
    s3 = boto3.client("s3", endpoint_url=s.s3_endpoint, region_name=s.s3_region,
                      aws_access_key_id=s.aws_access_key_id, aws_secret_access_key=s.aws_secret_access_key)  # fmt: skip
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert {s.sightings_bucket, s.models_bucket} <= names


# --------------------------------------------------------------------------- Redis
def test_redis_hash_and_stream_with_a_consumer_group(stack):
    import redis

    client = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    prefix = f"stack-test:{uuid.uuid4().hex[:8]}"
    client.hset(f"{prefix}:sighting", mapping={"status": "embedded", "score": "0.87"})
    assert client.hgetall(f"{prefix}:sighting") == {"status": "embedded", "score": "0.87"}

    stream = f"{prefix}:events"
    ids = [client.xadd(stream, {"n": str(i)}) for i in range(3)]
    client.xgroup_create(stream, "readers", id="0")
    entries = client.xreadgroup("readers", "r1", {stream: ">"}, count=10)[0][1]
    assert [e[0] for e in entries] == ids and [e[1]["n"] for e in entries] == ["0", "1", "2"]
    assert client.xack(stream, "readers", *ids) == 3
    assert client.xpending(stream, "readers")["pending"] == 0
    client.delete(f"{prefix}:sighting", stream)
    client.close()


# --------------------------------------------------------------------------- Triton
def test_triton_loads_a_python_model_and_answers_over_grpc_and_http(stack):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    name = f"double_{uuid.uuid4().hex[:6]}"
    write_double_model(stack.model_repository, name)
    x = np.array([[1.0, -2.0, 3.5], [0.0, 0.25, 8.0]], dtype=np.float32)

    grpc = grpcclient.InferenceServerClient(stack.settings.triton_grpc_url)
    http = httpclient.InferenceServerClient(stack.settings.triton_http_url)
    try:
        assert not grpc.is_model_ready(name)
        grpc.load_model(name)
        assert grpc.is_model_ready(name)

        g_in = grpcclient.InferInput("X", list(x.shape), "FP32")
        g_in.set_data_from_numpy(x)
        np.testing.assert_array_equal(grpc.infer(name, [g_in]).as_numpy("Y"), 2 * x)

        h_in = httpclient.InferInput("X", list(x.shape), "FP32")
        h_in.set_data_from_numpy(x, binary_data=True)
        np.testing.assert_array_equal(http.infer(name, [h_in]).as_numpy("Y"), 2 * x)
        grpc.unload_model(name)
    finally:
        grpc.close()
        http.close()


def test_broken_model_repository_fails_with_an_error_naming_triton(tmp_path):
    repository = tmp_path / "repo"
    write_double_model(repository, "broken")
    (repository / "broken" / "config.pbtxt").write_text('name: "broken" backend: python {{{')
    triton = launch_triton(repository, tmp_path / "logs")
    try:
        with pytest.raises(ServerStartError) as info:
            triton.wait_healthy(60)
    finally:
        triton.stop()
    assert info.value.server == "triton"
    message = str(info.value)
    assert message.startswith("triton failed to start")
    assert "broken/config.pbtxt" in message and "failed to load all models" in message
    assert not pid_alive(triton.pid)


# --------------------------------------------------------------------------- Prometheus
def test_prometheus_scrapes_the_stack_and_added_targets(stack):
    if "prometheus" not in stack.state["servers"]:
        pytest.skip("prometheus is not installed (make install installs it on Debian as root)")
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    registry = CollectorRegistry()
    Counter("stack_test_total", "a counter for the stack test", registry=registry).inc()
    (port,) = free_ports(1)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    job = f"stack-test-{uuid.uuid4().hex[:6]}"
    stack.stack.add_scrape_target(job, f"127.0.0.1:{port}")
    url = stack.settings.prometheus_url
    try:

        def targets_up():
            with urllib.request.urlopen(f"{url}/api/v1/targets?state=active", timeout=2) as response:
                active = json.load(response)["data"]["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in active}
            return health if all(health.get(j) == "up" for j in ("prometheus", "triton", job)) else None

        health = wait_for(targets_up, 30, "prometheus, triton and the added target to be up", interval=0.5)
        assert health[job] == "up"

        def sample():
            query = urllib.request.quote(f'stack_test_total{{job="{job}"}}')
            with urllib.request.urlopen(f"{url}/api/v1/query?query={query}", timeout=2) as response:
                return json.load(response)["data"]["result"]

        assert float(wait_for(sample, 15, "the added target's sample")[0]["value"][1]) == 1.0
    finally:
        stack.stack.remove_scrape_target(job)
        server.shutdown()


def test_scrape_targets_are_file_sd_json_and_bad_ones_are_refused(tmp_path):
    from services.core.errors import ConfigError
    from services.devtools.stack.prometheus import prometheus_config
    from services.devtools.stack.scrape_targets import read_targets, remove_target, write_target

    path = write_target(tmp_path, "worker", ["127.0.0.1:9401", "127.0.0.1:9402"])
    assert json.loads(path.read_text()) == [
        {"targets": ["127.0.0.1:9401", "127.0.0.1:9402"], "labels": {"job": "worker"}}
    ]
    write_target(tmp_path, "matcher", "127.0.0.1:9403")
    assert read_targets(tmp_path) == {
        "matcher": ["127.0.0.1:9403"],
        "worker": ["127.0.0.1:9401", "127.0.0.1:9402"],
    }
    remove_target(tmp_path, "worker")
    assert read_targets(tmp_path) == {"matcher": ["127.0.0.1:9403"]}
    with pytest.raises(ConfigError, match="not host:port"):
        write_target(tmp_path, "worker", "localhost")
    with pytest.raises(ConfigError, match="job name"):
        write_target(tmp_path, "../escape", "127.0.0.1:1")

    config = prometheus_config("127.0.0.1:9090", {"triton": "127.0.0.1:8002"}, "/run/targets/*.json")
    jobs = {c["job_name"]: c for c in config["scrape_configs"]}
    assert config["global"]["scrape_interval"] == "1s"
    assert jobs["triton"]["static_configs"] == [{"targets": ["127.0.0.1:8002"]}]
    assert jobs["services"]["file_sd_configs"][0]["files"] == ["/run/targets/*.json"]


# --------------------------------------------------------------------------- failures and down
def test_a_taken_port_fails_with_an_error_naming_the_server_and_stops_the_others(tmp_path):
    kafka_port, taken = free_ports(2)
    settings = load_settings(profile="local", environ={}, run_dir=tmp_path / "run")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        stack = Stack(settings, servers=["kafka", "redis"], ports={"kafka": kafka_port, "redis": taken})
        with pytest.raises(ServerStartError) as info:
            stack.up(timeout=30)
    assert info.value.server == "redis"
    assert "redis failed to start" in str(info.value) and "Address already in use" in str(info.value)
    assert not port_in_use(kafka_port)  # the broker that did start was stopped again
    assert not (tmp_path / "run" / "state.json").exists()


def test_a_server_ignoring_sigterm_is_killed_with_its_children_but_only_by_its_owner(tmp_path):
    script = "trap '' TERM; sleep 60 & echo $! > child.pid; wait"
    proc = ServerProcess(
        "stubborn", ["bash", "-c", script], tmp_path / "stubborn.log", owner="t#stubborn", cwd=tmp_path
    )
    proc.start()
    child_file = tmp_path / "child.pid"
    child = int(
        wait_for(lambda: child_file.exists() and child_file.read_text().strip(), 5, "the child's pid")
    )

    assert not stop_pid(proc.pid, "another-run#stubborn")  # a different owner marker: not signalled
    assert proc.alive() and pid_alive(child)

    began = time.monotonic()
    assert stop_pid(proc.pid, "t#stubborn", grace=0.5)
    assert time.monotonic() - began < 5
    assert not proc.alive() and not pid_alive(child)


def test_down_stops_exactly_its_own_processes(tmp_path):
    unrelated = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        settings = load_settings(profile="local", environ={}, run_dir=tmp_path / "run")
        state = Stack(settings, servers=["kafka", "redis"]).up(timeout=30)
        # a recorded PID that now belongs to someone else (e.g. reused after a crash) must not be signalled
        state["servers"]["impostor"] = {"pid": unrelated.pid, "log": "x"}
        (tmp_path / "run" / "state.json").write_text(json.dumps(state))

        stopped = Stack.from_state(tmp_path / "run").down()  # a fresh object: stops by PID, as the CLI does
        assert sorted(stopped) == ["kafka", "redis"]
        for name in ("kafka", "redis"):
            assert not pid_alive(state["servers"][name]["pid"]), name
        assert unrelated.poll() is None, "down killed a process it did not start"
        assert not (tmp_path / "run" / "state.json").exists()
    finally:
        unrelated.kill()
        unrelated.wait()


def test_cli_up_status_env_down_leaves_nothing_running(tmp_path):
    run_dir, repo = tmp_path / "run", tmp_path / "models"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHALEID_")}

    def whaleid(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([WHALEID, "stack", *args, "--run-dir", str(run_dir)], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    up = whaleid("up", "--model-repository", str(repo), "--no-prometheus")
    try:
        assert up.returncode == 0, up.stderr
        assert repo.is_dir()  # an empty model repository is created
        state = json.loads((run_dir / "state.json").read_text())
        assert set(state["servers"]) == {"kafka", "s3", "redis", "triton"}
        pids = [entry["pid"] for entry in state["servers"].values()]

        again = whaleid("up")
        assert again.returncode == 2 and "already up" in again.stderr

        status = whaleid("status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert all(r["healthy"] for r in json.loads(status.stdout).values())
        text = whaleid("status").stdout
        assert "kafka" in text and "memory-only" in text  # the embedded broker keeps nothing on disk: it says so
        assert "seaweedfs: upload events via seaweedfs" in text

        exports = whaleid("env").stdout
        shell = subprocess.run(["bash", "-c", exports + "\necho $WHALEID_KAFKA_BOOTSTRAP $WHALEID_RUN_DIR "
                                "$WHALEID_BRIDGE_SOURCE"], capture_output=True, text=True, check=True)  # fmt: skip
        assert shell.stdout.split() == [state["servers"]["kafka"]["bootstrap"], str(run_dir), "seaweedfs"]

        redis_pid = state["servers"]["redis"]["pid"]
        os.kill(redis_pid, signal.SIGTERM)
        wait_for(lambda: not pid_alive(redis_pid), 10, "redis to exit")
        broken = whaleid("status")
        assert broken.returncode == 1
        assert "redis" in broken.stdout and "UNHEALTHY (process is not running)" in broken.stdout
    finally:
        down = whaleid("down")
    assert down.returncode == 0, down.stderr
    assert not (run_dir / "state.json").exists()
    assert [pid for pid in pids if pid_alive(pid)] == []
    gone = whaleid("status")
    assert gone.returncode == 2 and "no stack is up" in gone.stderr


def test_kafka_health_check_of_a_broker_not_listening_yet_logs_no_error(caplog):
    """A stack start polls the broker before it listens: the refusals are not kafka-python ERROR lines on the
    console (the `ERROR kafka.net.connection ... ECONNREFUSED` of every `whaleid demo` start)."""
    import logging

    from services.devtools.stack.health import check_kafka
    from services.devtools.stack.ports import free_port

    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ConnectionRefusedError):
            check_kafka(f"127.0.0.1:{free_port()}")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
