"""Operations (#7) against real servers: gallery versions + pointer + rollback in S3 (moto), confirmations through
the real gateway (aiohttp server, Redis, Kafka), re-indexing into a version the real matcher serves, a hot swap
during a running stream (`whaleid serve matcher` subprocess), and a real Prometheus scraping services.core.metrics."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import requests
from aiohttp.test_utils import TestClient, TestServer
from kafka import KafkaProducer
from prometheus_client import REGISTRY

from services.cli.main import main as whaleid
from services.core import keys, topics
from services.curation.operations.confirmations import (
    ConfirmationRefused,
    ConfirmationService,
    audit_trail,
    stored_confirmation,
)
from services.curation.operations.gallery_versions import GalleryStore, ModelStoreError, UnsafePath
from services.curation.operations.known import CurrentGalleryIndividuals
from services.curation.operations.reindex import reindex
from services.devtools.stack.binaries import on_path
from services.devtools.stack.ports import free_port
from support.chain import (
    ServiceProcess,
    chain_env,
    identification,
    read_topic,
    stream_counts,
    wait_announced,
    wait_until,
)
from support.operations import Clusters, isolated_catalogue, publish_initial_gallery, seed_sighting

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
INDIVIDUALS = [f"ind-{i}" for i in range(6)]
_db_numbers = itertools.cycle(range(11, 16))  # a Redis database of its own per test (flushed first)
APP_TOKEN = "ops-test-token"  # role app: may not confirm
RESEARCHER_TOKEN = "ops-researcher-token"  # the researcher dr-fluke


@pytest.fixture(scope="module")
def ops(stack):
    """The session's embedded stack (tests/conftest.py): (Stack, Settings with every address filled)."""
    return stack.stack, stack.settings


@pytest.fixture
def env(ops, monkeypatch):
    """Per test: its own gallery prefix and Redis database, exported as WHALEID_* for the CLI."""
    with isolated_catalogue(ops[1], monkeypatch, next(_db_numbers), "galleries", APP_TOKEN,
                            RESEARCHER_TOKEN) as env:
        yield env


def _sample(metric: str, **labels) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


# --------------------------------------------------------------------------- versions, pointer, rollback
def test_versions_pointer_and_one_command_rollback(env, tmp_path, capsys):
    settings, store, _ = env
    clusters = Clusters()
    assert store.pointer() is None
    v1 = publish_initial_gallery(store, clusters, INDIVIDUALS[:3], tmp_path)
    v2 = publish_initial_gallery(store, clusters, INDIVIDUALS, tmp_path)
    pointer = store.pointer()
    assert (pointer.version, pointer.history) == (v2, [v1])
    assert store.individuals(v2) == set(INDIVIDUALS)
    # a half-uploaded version (no version.json, no manifest) is never listed nor pointed to
    store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/vbroken/embeddings.npy", Body=b"x")
    assert [v["version"] for v in store.list_versions()] == [v1, v2]
    with pytest.raises(ModelStoreError, match="incomplete"):
        store.set_current("vbroken", reason="test")

    assert whaleid(["gallery", "rollback"]) == 0
    assert store.current_version() == v1
    assert f"current: {v1}" in capsys.readouterr().out
    assert whaleid(["gallery", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["current"] == v1 and [v["version"] for v in listing["versions"]] == [v1, v2]
    assert whaleid(["gallery", "rollback"]) == 2  # nothing older: a clear error, exit code 2
    assert "no previous version" in capsys.readouterr().err

    # a plain-text pointer written by another tool is understood
    store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/current", Body=v2.encode())
    assert store.current_version() == v2


# --------------------------------------------------------------------------- confirmations via the gateway
def _gateway_calls(settings, calls):
    """POST each (sighting_id, body[, token]) to the real gateway app (default: dr-fluke's researcher token);
    returns [(status, json)], then the GET of the first sighting's confirmation."""
    from services.chain.gateway.app import build_app

    async def run():
        server = TestServer(build_app(settings), host="127.0.0.1", port=free_port())
        async with TestClient(server) as client:
            out = []
            for sighting_id, body, *token in calls:
                headers = {"Authorization": f"Bearer {token[0] if token else RESEARCHER_TOKEN}"}
                response = await client.post(f"/v1/sightings/{sighting_id}/confirmation", json=body, headers=headers)
                out.append((response.status, await response.json()))
            got = await client.get(f"/v1/sightings/{calls[0][0]}/confirmation",
                                   headers={"Authorization": f"Bearer {RESEARCHER_TOKEN}"})
            out.append((got.status, await got.json()))
            return out

    return asyncio.run(run())


def test_confirmations_accepted_refused_and_audited(env, tmp_path):
    settings, store, client = env
    clusters = Clusters()
    version = publish_initial_gallery(store, clusters, INDIVIDUALS, tmp_path)
    a = seed_sighting(client, clusters.sample("ind-0"), [("ind-0", 0.91), ("new_individual", 0.5)])
    b = seed_sighting(client, clusters.sample("new-whale"), [("new_individual", 0.5), ("ind-3", 0.1)])
    c = seed_sighting(client, clusters.sample("new-whale"), [("new_individual", 0.5), ("ind-3", 0.1)])
    r = seed_sighting(client, clusters.sample("ind-1"), [("ind-2", 0.7), ("new_individual", 0.5)])
    no_embedding = seed_sighting(client, None, None)
    refused_before = _sample("whaleid_confirmations_total", action="confirm", outcome="unknown_individual")

    me = {"researcher": "dr-fluke"}
    results = _gateway_calls(settings, [
        (a, {"action": "confirm", "individual_id": "ind-0", **me}),           # 0 accepted
        (a, {"action": "confirm", "individual_id": "ind-0", **me}),           # 1 the same again: 200, stored one
        (a, {"action": "confirm", "individual_id": "ind-4", **me}),           # 2 conflicting
        (a, {"action": "new", **me}),                                         # 3 conflicting
        (b, {"action": "confirm", "individual_id": "ind-99", **me}),          # 4 unknown individual
        (b, {"action": "new", **me}),                                         # 5 new id assigned
        (no_embedding, {"action": "new", **me}),                              # 6 no embedding
        ("nope", {"action": "confirm", "individual_id": "ind-0", **me}),      # 7 unknown sighting
        (b, {"action": "maybe", **me}),                                       # 8 bad action
        (b, {"action": "new", "researcher": "dr-tail"}),                      # 9 not the credential's name
        (r, {"action": "reject"}),                                            # 10 reject the top prediction
        (a, {"action": "confirm", "individual_id": "ind-0", **me}, "wrong"),  # 11 wrong token
        (a, {"action": "confirm", "individual_id": "ind-0", **me}, APP_TOKEN),  # 12 an app may not confirm
    ])
    statuses = [status for status, _ in results]
    assert statuses == [201, 200, 409, 409, 409, 201, 409, 404, 400, 403, 201, 401, 403, 200], results
    assert results[9][1]["code"] == "researcher_mismatch" and results[12][1]["code"] == "forbidden"
    assert results[10][1]["confirmation"]["researcher"] == "dr-fluke"  # from the credential
    assert results[1][1]["created"] is False
    assert "already decided: confirm 'ind-0' by dr-fluke" in results[2][1]["error"]
    assert f"neither in gallery version {version}" in results[4][1]["error"]
    assert "no stored embedding" in results[6][1]["error"]
    assert results[10][1]["confirmation"]["individual_id"] == "ind-2"  # the rejected top candidate
    new_id = results[5][1]["confirmation"]["individual_id"]
    assert re.fullmatch(r"whale-[0-9a-f]{8}", new_id)
    assert results[-1][1]["confirmation"]["researcher"] == "dr-fluke"

    # a previously assigned new id is a valid target; the predicted candidates are kept for the audit
    service = ConfirmationService(client, CurrentGalleryIndividuals(store))
    conf, created = service.submit(c, {"action": "confirm", "individual_id": new_id, "researcher": "dr-tail"})
    assert created and conf.predicted[0]["individual_id"] == "new_individual"
    assert stored_confirmation(client, a).predicted[0] == {"individual_id": "ind-0", "score": 0.91}

    trail = audit_trail(client)
    outcomes = [(e["sighting_id"], e["outcome"]) for e in trail]
    assert (a, "accepted") in outcomes and (a, "conflict") in outcomes and (b, "unknown_individual") in outcomes
    assert ("nope", "unknown_sighting") in outcomes and (no_embedding, "no_embedding") in outcomes
    assert all(e["at"] for e in trail)
    assert _sample("whaleid_confirmations_total", action="confirm",
                   outcome="unknown_individual") == refused_before + 1

    # every accepted HTTP confirmation is on the topic exactly once (the repeat is not announced again)
    announced = [(k, v) for k, v in read_topic(settings.kafka_bootstrap, topics.CONFIRMATIONS, timeout_s=2)
                 if k in (a, b, r)]
    assert sorted(k for k, _ in announced) == sorted([a, b, r])
    assert {k: v["action"] for k, v in announced} == {a: "confirm", b: "new", r: "reject"}


def test_audit_trail_finds_entries_wherever_they_are_in_the_stream(env):
    """Past the first 1000 entries: a sighting's own stream, and paging through the global one for entries
    written before per-sighting streams existed (here: raw XADDs to the global stream only)."""
    _settings, _store, client = env
    legacy = uuid.uuid4().hex
    pipe = client.pipeline(transaction=False)
    for n in range(1500):
        target = legacy if n in (3, 1400) else f"other-{n}"
        pipe.xadd(keys.CONFIRMATIONS_AUDIT_STREAM, {"sighting_id": target, "action": "confirm", "outcome": "accepted", "n": str(n)})
    pipe.execute()
    service = ConfirmationService(client, known=lambda: None)
    late = uuid.uuid4().hex
    with pytest.raises(ConfirmationRefused):
        service.submit(late, {"action": "confirm", "individual_id": "ind-0"}, researcher="dr-fluke")

    (entry,) = audit_trail(client, late)
    assert (entry["outcome"], entry["researcher"]) == ("unknown_sighting", "dr-fluke")
    assert [e["n"] for e in audit_trail(client, legacy)] == ["3", "1400"]
    everything = audit_trail(client)
    assert len(everything) == 1501 and everything[-1]["sighting_id"] == late
    assert audit_trail(client, page_size=7) == everything  # the XRANGE cursor neither skips nor repeats

    # bounded: with audit_maxlen the global stream is trimmed (XADD MAXLEN ~), each sighting's trail stays whole
    trimmed = ConfirmationService(client, known=lambda: None, audit_maxlen=200)
    with pytest.raises(ConfirmationRefused):
        trimmed.submit(late, {"action": "confirm", "individual_id": "ind-0"}, researcher="dr-fluke")
    assert 200 <= client.xlen(keys.CONFIRMATIONS_AUDIT_STREAM) < 1400
    assert [e["outcome"] for e in audit_trail(client, late)] == ["unknown_sighting", "unknown_sighting"]


# --------------------------------------------------------------------------- hostile model-store manifests
@pytest.mark.parametrize("path", ["../escaped.txt", "/tmp/absolute.txt", "a/../../escaped.txt", "", "a//b",
                                  "link/escaped.txt"])
def test_gallery_download_refuses_paths_outside_the_folder(env, tmp_path, path):
    _settings, store, _client = env
    version = "vhostile-" + uuid.uuid4().hex[:6]
    info = {"version": version, "parent": None, "created_at": 1.0, "size": 1, "individuals": 1,
            "added_sightings": [], "files": {"manifest.json": "0" * 64, path: "0" * 64}}
    store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/{version}/version.json",
                            Body=json.dumps(info).encode())
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "link").symlink_to(outside)  # a symlink already in the folder must not be followed out of it
    with pytest.raises(UnsafePath, match="refusing the path"):
        store.download(version, dest)
    assert [p.name for p in dest.iterdir()] == ["link"] and list(outside.iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("key", ["../../escaped.txt", "/absolute.txt", "models/../../../escaped.txt"])
def test_model_repo_pull_refuses_paths_outside_the_repository(moto_stack, tmp_path, key):
    """On moto: SeaweedFS (the session stack's S3) refuses such keys itself (InvalidRequest); AWS S3 and moto
    store them, so `pull` must refuse them."""
    from services.core.errors import RepositoryError
    from services.serving.model_repo.repository_builds import pull

    settings = moto_stack.settings
    store = GalleryStore.from_settings(settings)
    prefix = "hostile-repo-" + uuid.uuid4().hex[:6]
    for name in ("repository.json", key):
        store.client.put_object(Bucket=store.bucket, Key=f"{prefix}/b1/{name}", Body=b"{}")
    repository = tmp_path / "deep" / "models"
    repository.parent.mkdir()
    with pytest.raises(RepositoryError, match="refusing to pull.*refusing the path"):
        pull(repository, prefix=prefix, build_id="b1", settings=settings)
    assert list(tmp_path.rglob("*")) == [tmp_path / "deep"]  # nothing written, staging removed


# --------------------------------------------------------------------------- confirm -> reindex -> identified
def test_confirm_reindex_identifies_then_rollback(env, tmp_path, capsys):
    from services.chain.matcher.matching import Matcher

    settings, store, client = env
    clusters = Clusters()
    v1 = publish_initial_gallery(store, clusters, INDIVIDUALS, tmp_path)
    matcher = Matcher(settings, store)
    matcher.reload()

    def identify(embedding) -> list[dict]:
        record = topics.SightingEmbedded(sighting_id=uuid.uuid4().hex, embedding=[float(x) for x in embedding],
                                         model_version="toy")
        return matcher.identify([record])[0].candidates

    assert identify(clusters.sample("fresh-whale"))[0]["individual_id"] == "new_individual"
    service = ConfirmationService(client, CurrentGalleryIndividuals(store))
    s_new = seed_sighting(client, clusters.sample("fresh-whale"), [("new_individual", 0.5)], species_hint="orca")
    s_known = seed_sighting(client, clusters.sample("ind-2"), [("ind-2", 0.9)])
    s_lost = seed_sighting(client, clusters.sample("ind-3"), [("ind-3", 0.9)])
    new_id = service.submit(s_new, {"action": "new", "researcher": "dr-fluke"})[0].individual_id
    service.submit(s_known, {"action": "confirm", "individual_id": "ind-2", "researcher": "dr-fluke"})
    service.submit(s_lost, {"action": "confirm", "individual_id": "ind-3", "researcher": "dr-fluke"})
    client.delete(keys.embedding_key(s_lost))  # e.g. expired: reported, not silently dropped

    dry = reindex(store, client, dry_run=True)
    assert dry.new_version is None and store.current_version() == v1 and sorted(dry.added) == sorted([s_new, s_known])

    capsys.readouterr()
    assert whaleid(["reindex", "--json"]) == 1  # 1: some confirmed sightings could not be added
    report = json.loads(capsys.readouterr().out)
    assert "no stored embedding" in report["skipped"][s_lost] and report["new_individuals"] == [new_id]
    v2 = store.current_version()
    info = store.version_info(v2)
    assert v2 != v1 and info["parent"] == v1 and sorted(info["added_sightings"]) == sorted([s_new, s_known])
    assert info["size"] == len(INDIVIDUALS) * 3 + 2 and new_id in store.individuals(v2)
    assert store.pointer().reindexed_at > 0 and store.pointer().history == [v1]

    assert matcher.reload() is True
    top = identify(clusters.sample("fresh-whale"))[0]
    assert top["individual_id"] == new_id and top["score"] > 0.5
    assert identify(clusters.sample("ind-2"))[0]["individual_id"] == "ind-2"

    again = reindex(store, client)  # idempotent: nothing new, same version, fresher re-index time
    assert again.new_version is None and again.added == [] and store.current_version() == v2
    assert s_lost in again.skipped and "no stored embedding" in again.skipped[s_lost]

    assert whaleid(["gallery", "rollback"]) == 0
    assert matcher.reload() is True
    assert identify(clusters.sample("fresh-whale"))[0]["individual_id"] == "new_individual"


# --------------------------------------------------------------------------- hot swap during a stream
def test_hot_swap_during_stream_loses_and_duplicates_nothing(env, ops, tmp_path):
    settings, store, client = env
    stack, _ = ops
    clusters = Clusters(seed=11)
    v1 = publish_initial_gallery(store, clusters, INDIVIDUALS, tmp_path)
    service = ConfirmationService(client, CurrentGalleryIndividuals(store))
    seed = seed_sighting(client, clusters.sample("swap-whale"), [("new_individual", 0.5)])
    new_id = service.submit(seed, {"action": "new", "researcher": "dr-fluke"})[0].individual_id

    matcher = ServiceProcess("matcher", chain_env(stack.state, tmp_path, triton_grpc="127.0.0.1:1",
                                                  redis_url=settings.redis_url,
                                                  gallery_prefix=settings.gallery_prefix,
                                                  matcher_reload_interval_s=0.5), tmp_path)
    matcher.start()
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=0)
    sent: list[str] = []
    try:
        matcher.wait_ready(timeout=90)

        def send(n: int) -> None:
            for _ in range(n):
                sighting_id = uuid.uuid4().hex
                record = topics.SightingEmbedded(
                    sighting_id=sighting_id, embedding=[float(x) for x in clusters.sample("swap-whale")],
                    model_version="toy", uploaded_at=time.time(), embedded_at=time.time())
                producer.send(topics.SIGHTINGS_EMBEDDED, key=sighting_id.encode(), value=record.to_json())
                sent.append(sighting_id)
                time.sleep(0.02)
            producer.flush()

        send(30)
        v2 = reindex(store, client).new_version  # the pointer moves while the stream runs

        def swapped() -> bool:  # keep the stream going until results come from the new version
            send(5)
            return any((identification(client, s) or {}).get("gallery_version") == v2 for s in sent)

        wait_until(swapped, 40, f"results from gallery {v2}", interval=0.2)
        send(20)
        wait_announced(client, sent, 60, "every identification announced")
    finally:
        producer.close()
        matcher.stop()
    results = {s: json.loads(client.get(keys.identification_key(s))) for s in sent}
    counts = stream_counts(client)
    assert all(counts.get(s) == 1 for s in sent), "each sighting announced exactly once"
    on_topic = [k for k, _ in read_topic(settings.kafka_bootstrap, topics.IDENTIFICATIONS) if k in set(sent)]
    assert sorted(on_topic) == sorted(sent), "each sighting on the identifications topic exactly once"
    by_time = sorted(results.values(), key=lambda r: r["identified_at"])
    versions = [r["gallery_version"] for r in by_time]
    assert versions[0] == v1 and versions[-1] == v2 and set(versions) == {v1, v2}
    assert versions == sorted(versions, key=lambda v: v != v1), "one switch from v1 to v2, never back"
    for s in sent:
        top = results[s]["candidates"][0]["individual_id"]
        assert top == (new_id if results[s]["gallery_version"] == v2 else "new_individual")


# --------------------------------------------------------------------------- Prometheus
EXPORTER = textwrap.dedent("""
    import sys, time
    from services.core import metrics as m
    m.STEP_LATENCY.labels(stage="worker", step="embed").observe(0.04)
    m.END_TO_END_LATENCY.observe(0.8)
    m.TRITON_LATENCY.observe(0.03)
    m.SEARCH_LATENCY.observe(0.002)
    m.EVENTS.labels(stage="matcher", outcome="identified").inc(5)
    m.DEAD_LETTERS.labels(stage="worker", reason="not_an_image").inc()
    m.IDENTIFICATIONS.labels(result="new_individual").inc(2)
    m.IDENTIFICATIONS.labels(result="known").inc(8)
    m.GALLERY_SIZE.set(20)
    m.GALLERY_INDIVIDUALS.set(7)
    m.GALLERY_VERSION.labels(version="v-test").set(1)
    m.GALLERY_BUILT.set(time.time() - 60)
    m.CONSUMER_OFFSET.labels(stage="matcher", topic="sightings.embedded", partition="0").set(41)
    m.UPLOADS.labels(outcome="accepted").inc(3)
    m.CONFIRMATIONS.labels(action="new", outcome="accepted").inc()
    m.REINDEX_LAST_SUCCESS.set(time.time() - 3600)
    m.TRITON_RETRIES.inc()
    m.serve_metrics(int(sys.argv[1]))
    print("serving", flush=True)
    time.sleep(120)
""")


def _dashboard_and_alert_expressions() -> list[str]:
    import yaml

    dashboard = json.loads((DEPLOY / "grafana" / "whaleid.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return [e.replace("$__rate_interval", "1m") for e in exprs]


@pytest.mark.skipif(not on_path("prometheus"), reason="prometheus not installed (make install installs it)")
def test_prometheus_scrapes_services_metrics_and_evaluates_dashboard(ops, tmp_path):
    stack, settings = ops
    port = free_port()
    exporter = subprocess.Popen([sys.executable, "-c", EXPORTER, str(port)], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert exporter.stdout.readline().strip() == b"serving"
        stack.add_scrape_target("whaleid-ops-test", f"127.0.0.1:{port}")
        api = settings.prometheus_url + "/api/v1/query"

        def query(expr: str) -> dict:
            body = requests.get(api, params={"query": expr}, timeout=5).json()
            assert body["status"] == "success", (expr, body)
            return body["data"]

        key_series = ["whaleid_reindex_last_success_timestamp_seconds", "whaleid_confirmations_total",
                      "whaleid_gallery_size", "whaleid_step_latency_seconds_bucket", "whaleid_dead_letters_total",
                      "whaleid_consumer_committed_offset", "whaleid_gallery_version_info"]
        wait_until(lambda: all(query(f'{name}{{job="whaleid-ops-test"}}')["result"] for name in key_series),
                   40, "Prometheus to scrape the key series", interval=0.5)
        assert query('up{job="whaleid-ops-test"}')["result"][0]["value"][1] == "1"
        confirmations = query('whaleid_confirmations_total{job="whaleid-ops-test"}')["result"][0]
        assert confirmations["metric"]["action"] == "new" and confirmations["value"][1] == "1"
        age = float(query('time() - whaleid_reindex_last_success_timestamp_seconds{job="whaleid-ops-test"}')
                    ["result"][0]["value"][1])
        assert 3500 < age < 3800
        for expr in _dashboard_and_alert_expressions():  # every panel and alert is valid PromQL on real data
            query(expr)
    finally:
        stack.remove_scrape_target("whaleid-ops-test")
        exporter.kill()
        exporter.wait()
